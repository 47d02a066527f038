"""nslab: emulated datacenters, guided labs and an autograder for a course on
networked systems for machine-learning inference.

The package mirrors the flow of a lab:
topology file -> model (nslab.topo) -> engine (nslab.engine) -> running lab
-> observations (nslab.measure) -> grades (nslab.grading).
"""

from pathlib import Path

__version__ = "0.1.0"

# The checkout this package runs from (an editable install): labs/, images/,
# controller/ and topologies/ live here. The one definition; import it.
REPO_ROOT = Path(__file__).resolve().parent.parent
