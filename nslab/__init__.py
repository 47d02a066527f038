"""nslab: emulated datacenters, guided labs and an autograder for a course on
networked systems for machine-learning inference.

The package mirrors the flow of a lab:
topology file -> model (nslab.topo) -> engine (nslab.engine) -> running lab
-> observations (nslab.measure) -> grades (nslab.grading).
"""

__version__ = "0.1.0"
