"""Run an os-ken (or Ryu-style) OpenFlow controller app.

os-ken ships no `osken-manager`, so this is the kit's replacement:

    python -m nslab.controller APP [APP ...] [--port N] [--host 127.0.0.1]
                               [--fabric FILE] [--log FILE] [--verbose]

APP is a path to a `.py` file, a bare name meaning `controller/<name>.py` in
this repository, or a dotted module name (`ryu.app.simple_switch_13`).

The engine calls `start_controller()`, which spawns this runner in its own
process group and returns once the controller listens on its port.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from nslab import REPO_ROOT, process
from nslab.errors import NslabError
from nslab.ports import free_port  # noqa: F401  (part of nslab.controller's API)

APPS_DIR = REPO_ROOT / "controller"
DEFAULT_PORT = 6653
FABRIC_ENV = "NSLAB_FABRIC"
READY_TIMEOUT_S = 30.0  # os-ken imports take ~1-2 s; a loaded 2-core box needs slack


# Old names of the kit's apps. `l2_learning` was a learning switch, which is lab
# 0's exercise, so the kit replaced it by the proactive fabric_router; topologies
# that name it (users' files, other labs) keep working, routed by the new app.
ALIASES = {"l2_learning": "fabric_router"}


def _alias_note(app: str) -> str:
    return f"app {app} is now called {ALIASES[app]} (a proactive router, not a learning switch)"


def available_apps() -> list[str]:
    return sorted(p.stem for p in APPS_DIR.glob("*.py") if not p.name.startswith("_"))


def resolve_app(app: str) -> str:
    """A file path (absolute) or a dotted module name for `app`; NslabError if neither."""
    looks_like_path = app.endswith(".py") or os.sep in app
    if looks_like_path:
        path = Path(app).expanduser()
        try:
            os.stat(path)
        except PermissionError:
            raise NslabError(
                f"controller app {app!r}: permission denied for uid {os.getuid()} "
                "(the controller may run as an unprivileged user: make the file and "
                "its folders readable to it)"
            ) from None
        except OSError:
            pass
        if not path.is_file():
            raise NslabError(
                f"controller app {app!r}: no such file (give a path to a .py file, "
                f"or one of the kit's apps: {', '.join(available_apps()) or 'none'})"
            )
        return str(path.resolve())
    bundled = APPS_DIR / f"{ALIASES.get(app, app)}.py"
    if bundled.is_file():
        return str(bundled)
    if "." in app:
        return app  # a module name; checked when the runner imports it
    raise NslabError(
        f"controller app {app!r}: not found in {APPS_DIR} "
        f"(the kit's apps: {', '.join(available_apps()) or 'none'}; "
        "or give a path to a .py file)"
    )


def _log_tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log written)"
    return "\n".join(text[-lines:]) or "(log is empty)"


def start_controller(
    app: str,
    port: int,
    fabric: Path | None,
    log: Path,
    wrap: list[str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = READY_TIMEOUT_S,
    verbose: bool = False,
) -> subprocess.Popen:
    """Spawn the controller running `app` and return once it listens on `port`.

    The process leads its own process group (stop it with
    `os.killpg(proc.pid, signal.SIGTERM)`); its stdout/stderr go to `log`.
    `wrap` is an argv prefix it runs under (the grader's sandbox for a
    student's app). Raises NslabError with the log's tail when the controller
    exits or does not listen within `timeout` seconds.
    """
    target = resolve_app(app)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(_alias_note(app) + "\n" if app in ALIASES else "")
    os.chmod(log, 0o666)  # a sandboxed app's runner appends its own lines
    cmd = [*(wrap or []), sys.executable, "-m", "nslab.controller", target]
    cmd += ["--port", str(port), "--host", host]
    cmd += ["--log", str(log)]
    if fabric is not None:
        cmd += ["--fabric", str(fabric)]
    if verbose:
        cmd.append("--verbose")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if fabric is not None:
        env[FABRIC_ENV] = str(fabric)
    else:
        env.pop(FABRIC_ENV, None)
    try:
        return process.start(
            cmd,
            what=f"controller app {app!r}",
            log=log,
            append=True,
            env=env,
            cwd=str(REPO_ROOT),
            ready=process.Ready(port=port, timeout=timeout),
        ).popen
    except process.ProcessStartError as exc:
        raise NslabError(f"{exc} (it should listen on {host}:{port})") from None


# ---------------------------------------------------------------- the runner


def _import_app_file(path: str) -> str:
    """Import an app file as a module named after it; return the module name.

    Its directory goes on sys.path so an app can import helper modules next to it.
    """
    p = Path(path)
    name = p.stem
    if name in sys.modules:
        name = f"nslab_app_{name}"
    sys.path.insert(0, str(p.parent))
    spec = importlib.util.spec_from_file_location(name, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name


def _app_class_count(module_name: str) -> int:
    from os_ken.base.app_manager import OSKenApp

    mod = sys.modules[module_name]
    return sum(
        1
        for v in vars(mod).values()
        if isinstance(v, type) and issubclass(v, OSKenApp) and v.__module__ == module_name
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nslab.controller",
        description="Run os-ken / Ryu OpenFlow controller apps (OpenFlow 1.3 switches connect to HOST:PORT).",
    )
    p.add_argument(
        "apps",
        nargs="+",
        metavar="APP",
        help="app file (.py), a name in controller/ (e.g. fabric_router), or a module name",
    )
    # ryu-manager's spellings work too, so commands from Ryu tutorials carry over.
    p.add_argument(
        "--port",
        "--ofp-tcp-listen-port",
        type=int,
        default=DEFAULT_PORT,
        help="OpenFlow TCP port (6653)",
    )
    p.add_argument(
        "--host", "--ofp-listen-host", default="127.0.0.1", help="address to listen on (127.0.0.1)"
    )
    p.add_argument("--fabric", type=Path, help=f"fabric.json of the lab (sets ${FABRIC_ENV})")
    p.add_argument("--log", type=Path, help="append log lines to this file (default: stderr)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--observe-links",
        action="store_true",
        help="run os-ken's LLDP topology discovery (for apps using ryu.topology)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers: list[logging.Handler] = [
        logging.FileHandler(args.log) if args.log else logging.StreamHandler()
    ]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    log = logging.getLogger("nslab.controller")
    try:
        modules = _load_apps(args)
    except NslabError as exc:
        log.error("%s", exc)
        print(f"nslab.controller: error: {exc}", file=sys.stderr)
        return 2

    from os_ken import cfg
    from os_ken.base.app_manager import AppManager

    conf_args = ["--ofp-tcp-listen-port", str(args.port), "--ofp-listen-host", args.host]
    if args.observe_links:
        conf_args.append("--observe-links")
    cfg.CONF(args=conf_args, project="os_ken")
    log.info("apps %s; OpenFlow on %s:%d", ", ".join(modules), args.host, args.port)
    # ofp_handler is what listens; apps that use OpenFlow events pull it in
    # anyway, naming it keeps an app without handlers from silently not listening.
    AppManager.run_apps([*modules, "os_ken.controller.ofp_handler"])
    return 0


def _load_apps(args: argparse.Namespace) -> list[str]:
    import ryu  # noqa: F401  (installs the ryu -> os_ken alias for Ryu-style apps)

    if args.fabric is not None:
        if not args.fabric.is_file():
            raise NslabError(f"--fabric {args.fabric}: no such file")
        os.environ[FABRIC_ENV] = str(args.fabric.resolve())
    names = []
    for app in args.apps:
        target = resolve_app(app)
        if app in ALIASES:
            logging.getLogger("nslab.controller").info("%s", _alias_note(app))
        if target.endswith(".py"):
            name = _import_app_file(target)
        else:
            name = ryu.to_os_ken(target)
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                raise NslabError(f"controller app {app!r}: {exc}") from exc
        if _app_class_count(name) == 0:
            raise NslabError(
                f"controller app {app!r} defines no app class: it needs a class derived "
                "from os_ken.base.app_manager.OSKenApp (Ryu: ryu.base.app_manager.RyuApp)"
            )
        names.append(name)
    return names
