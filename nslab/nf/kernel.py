"""Kernel-side NFs: nftables configurations rendered from Jinja2 templates
(nslab/nf/templates/) and applied to NF containers with Ansible
(ansible-runner + the community.docker.docker connection plugin)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from nslab.errors import NslabError

TEMPLATES = Path(__file__).parent / "templates"
ANSIBLE = Path(__file__).parent / "ansible"


def templates() -> list[str]:
    """Names of the available NF templates (without .nft.j2)."""
    return sorted(p.name.removesuffix(".nft.j2") for p in TEMPLATES.glob("*.nft.j2"))


def render(template: str, **params: Any) -> str:
    """Render templates/<template>.nft.j2 with params; missing or malformed
    parameters raise NslabError naming them."""
    try:
        import jinja2  # imported here: NF containers run the toolkit without Jinja2
    except ImportError:
        raise NslabError(
            "rendering NF templates needs Jinja2 (pip install Jinja2); render on the host "
            "and apply from there (nslab.nf.apply)"
        ) from None

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    try:
        tpl = env.get_template(f"{template}.nft.j2")
    except jinja2.TemplateNotFound:
        raise NslabError(
            f"no NF template {template!r}; available: {', '.join(templates())}"
        ) from None
    _check_addresses(template, params)
    try:
        return tpl.render(**params)
    except jinja2.UndefinedError as exc:
        raise NslabError(f"template {template}: {exc.message} (pass it as a parameter)") from None


def _check_addresses(template: str, params: dict[str, Any]) -> None:
    for k, v in params.items():
        vals = v if isinstance(v, list | tuple) else [v]
        if k.endswith(("_ip", "_ips", "backends", "vip")):
            for x in vals:
                try:
                    ipaddress.IPv4Address(str(x))
                except ValueError:
                    raise NslabError(
                        f"template {template}: {k}={x!r} is not an IPv4 address"
                    ) from None
        if k.endswith(("_net", "_subnet")):
            for x in vals:
                try:
                    ipaddress.IPv4Network(str(x), strict=False)
                except ValueError:
                    raise NslabError(
                        f"template {template}: {k}={x!r} is not an IPv4 network (CIDR)"
                    ) from None


def apply(
    container: str | list[str],
    template: str,
    params: dict[str, Any] | None = None,
    private_data_dir: str | Path | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Apply NF `template` with `params` to Docker container(s) with Ansible:
    ansible-runner runs ansible/apply-nft.yml (role nft_nf: render the template
    into the container, enable forwarding, `nft -c`, then `nft -f`) over the
    community.docker.docker connection. Returns {"status", "rc", "changed",
    "ruleset"}. Raises NslabError when ansible-runner or community.docker is
    missing, or when the play fails (its artifacts are then kept and named)."""
    try:
        import ansible_runner  # type: ignore[import-not-found]
    except ImportError:
        raise NslabError(
            "nslab.nf.apply needs ansible-runner and Ansible with the community.docker "
            "collection: `.venv/bin/pip install ansible-runner ansible` (the `ansible` "
            "package bundles community.docker)"
        ) from None
    params = dict(params or {})
    ruleset = render(template, **params)  # fail early, with nslab's messages
    hosts = [container] if isinstance(container, str) else list(container)
    tmp = None
    if private_data_dir is None:
        tmp = tempfile.mkdtemp(prefix="nslab-ansible-")
        private_data_dir = tmp
    pdd = Path(private_data_dir)
    (pdd / "project").mkdir(parents=True, exist_ok=True)
    shutil.copytree(ANSIBLE, pdd / "project", dirs_exist_ok=True)
    shutil.copytree(TEMPLATES, pdd / "project" / "templates", dirs_exist_ok=True)
    inventory = {
        "all": {
            "hosts": {h: {"ansible_connection": "community.docker.docker"} for h in hosts},
            "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
        }
    }
    (pdd / "inventory").mkdir(exist_ok=True)
    (pdd / "inventory" / "hosts.json").write_text(json.dumps(inventory))
    r = ansible_runner.run(
        private_data_dir=str(pdd),
        playbook="apply-nft.yml",
        extravars={"nf_template": template, **params},
        # keep Ansible's own files (temp, home) in the run's folder, not in ~/.ansible
        envvars={
            "ANSIBLE_LOCAL_TEMP": str(pdd / "tmp"),
            "ANSIBLE_HOME": str(pdd / "home"),
            # ansible-playbook of this interpreter's venv, also under plain sudo
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        },
        quiet=quiet,
    )
    if r.rc != 0:
        raise NslabError(
            f"ansible play apply-nft.yml failed on {', '.join(hosts)} (status {r.status}, "
            f"rc {r.rc}); see {pdd}/artifacts"
        )
    changed = sum((r.stats or {}).get("changed", {}).values())
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"status": r.status, "rc": r.rc, "changed": changed, "ruleset": ruleset}
