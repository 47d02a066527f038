"""Kernel-side NFs: nftables configurations rendered from Jinja2 templates
(nslab/nf/templates/) and applied to NF containers with Ansible
(ansible-runner + the community.docker.docker connection plugin)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jinja2

from nslab.errors import NslabError

TEMPLATES = Path(__file__).parent / "templates"
ANSIBLE = Path(__file__).parent / "ansible"


def templates() -> list[str]:
    """Names of the available NF templates (without .nft.j2)."""
    return sorted(p.name.removesuffix(".nft.j2") for p in TEMPLATES.glob("*.nft.j2"))


def render(template: str, **params: Any) -> str:
    """Render templates/<template>.nft.j2 with params; missing or malformed
    parameters raise NslabError naming them."""
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
    """Render `template` and apply it with Ansible to Docker container(s)
    (inventory: community.docker.docker connection); returns
    {"status", "rc", "changed", "ruleset"}. Raises NslabError when ansible-runner or
    the community.docker collection is missing, or when the play fails."""
    try:
        import ansible_runner  # type: ignore[import-not-found]
    except ImportError:
        raise NslabError(
            "nslab.nf.apply needs ansible-runner and Ansible with the community.docker "
            "collection: `.venv/bin/pip install ansible-runner ansible` (the `ansible` "
            "package bundles community.docker)"
        ) from None
    ruleset = render(template, **(params or {}))
    hosts = [container] if isinstance(container, str) else list(container)
    tmp = None
    if private_data_dir is None:
        tmp = tempfile.mkdtemp(prefix="nslab-ansible-")
        private_data_dir = tmp
    pdd = Path(private_data_dir)
    try:
        (pdd / "project").mkdir(parents=True, exist_ok=True)
        shutil.copytree(ANSIBLE, pdd / "project", dirs_exist_ok=True)
        (pdd / "project" / "nf.nft").write_text(ruleset)
        inventory = {
            "all": {
                "hosts": {h: {"ansible_connection": "community.docker.docker"} for h in hosts},
                "vars": {"ansible_python_interpreter": "auto_silent"},
            }
        }
        (pdd / "inventory").mkdir(exist_ok=True)
        (pdd / "inventory" / "hosts.json").write_text(json.dumps(inventory))
        r = ansible_runner.run(
            private_data_dir=str(pdd),
            playbook="apply-nft.yml",
            extravars={"nft_file": str(pdd / "project" / "nf.nft")},
            quiet=quiet,
        )
        changed = sum((r.stats or {}).get("changed", {}).values()) if r.stats else 0
        if r.rc != 0:
            raise NslabError(
                f"ansible play apply-nft.yml failed on {', '.join(hosts)} (status {r.status}, "
                f"rc {r.rc}); output in {pdd}/artifacts"
            )
        return {"status": r.status, "rc": r.rc, "changed": changed, "ruleset": ruleset}
    finally:
        if tmp is not None and not quiet:
            pass
        elif tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
