"""spec.json and env.secret of an allocation: validation, defaults and the workload's environment.

spec.json (written by the controller, no secrets):
  argv          list of strings, executed as is; or
  command       one string, run as ["/bin/sh", "-c", command] (values are never interpolated into it)
  cwd           working directory (default: the allocation directory)
  env           {NAME: "value"}; values reach the workload verbatim through the environment
  gpus          absent/null: GPU variables untouched; [] : no GPU (CUDA_VISIBLE_DEVICES="",
                NVIDIA_VISIBLE_DEVICES="void"); [0, 2] or uuids: both set to "0,2"
  job           job name (FLEX_JOB)
  stop_signal   "SIGTERM" (default), name or number; stop_timeout seconds before SIGKILL (default 10)
  lease_ttl     seconds without a lease renewal before the supervisor fences the workload (0: never)
  health        {"type": "http", "port", "path", "host"} | {"type": "tcp", "port", "host"} |
                {"type": "command", "argv" | "command"}; plus "timeout" (2 s) and "interval" (0 s)
  log_max_bytes size cap of each log file before it rotates to .1 (default 10 MiB)
  generation    the controller's restart generation of this launch (default 0); `start` keeps it in
                state.json, so a controller restarted after a crash sees a restart already applied
env.secret (0600): a JSON object {NAME: "value"} read by the supervisor only.
"""

from __future__ import annotations

import os
import stat

from nodecommon import ALNUM, AllocPaths, NodeError, read_json
from nodeproc import signal_number

ENV_NAME_CHARS = frozenset(ALNUM + "_")
GPU_ID_CHARS = frozenset(ALNUM + "_:.-")


def valid_env_name(name: str) -> bool:
    """[A-Za-z_][A-Za-z0-9_]* (without re: its import is ~5 ms of every verb)."""
    return bool(name) and name[0] not in "0123456789" and ENV_NAME_CHARS.issuperset(name)
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
HEALTH_TYPES = ("http", "tcp", "command")
STRIPPED_ENV_PREFIXES = ("SSH_", "FLEX_")
STRIPPED_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


def load_spec(paths: AllocPaths) -> dict:
    """The allocation's spec, validated and with defaults filled; NodeError listing every problem."""
    if not paths.exists():
        raise NodeError(f"allocation {paths.alloc_id} has no directory {paths.dir}", code="no_alloc")
    raw = read_json(paths.spec)
    if raw is None:
        raise NodeError(f"allocation {paths.alloc_id} has no spec.json; push it before start", code="no_spec")
    if not isinstance(raw, dict):
        raise NodeError("spec.json must be a JSON object", code="bad_spec")
    problems = []
    spec = {
        "argv": _argv(raw, problems, "argv", "command"),
        "cwd": _opt_str(raw, "cwd", problems) or paths.dir,
        "env": _env(raw.get("env"), "env", problems),
        "gpus": _gpus(raw.get("gpus"), problems),
        "job": _opt_str(raw, "job", problems),
        "stop_signal": _signal(raw.get("stop_signal", "SIGTERM"), problems),
        "stop_timeout": _number(raw, "stop_timeout", DEFAULT_STOP_TIMEOUT, problems),
        "lease_ttl": _number(raw, "lease_ttl", 0.0, problems),
        "generation": int(_number(raw, "generation", 0, problems, minimum=0)),
        "log_max_bytes": int(_number(raw, "log_max_bytes", DEFAULT_LOG_MAX_BYTES, problems, minimum=100)),
        "health": _health(raw.get("health"), problems),
    }
    if problems:
        raise NodeError(f"spec.json of {paths.alloc_id}: {'; '.join(problems)}", code="bad_spec",
                        exit_status=2, problems=problems)
    return spec


def _argv(raw: dict, problems: list, argv_key: str, command_key: str, where: str = ""):
    argv, command = raw.get(argv_key), raw.get(command_key)
    if argv is not None and command is not None:
        problems.append(f"{where}give either {argv_key} or {command_key}, not both")
    elif argv is not None:
        if isinstance(argv, list) and argv and all(isinstance(a, str) and "\0" not in a for a in argv):
            return list(argv)
        problems.append(f"{where}{argv_key} must be a non-empty list of strings")
    elif command is not None:
        if isinstance(command, str) and command.strip() and "\0" not in command:
            return ["/bin/sh", "-c", command]
        problems.append(f"{where}{command_key} must be a non-empty string")
    else:
        problems.append(f"{where}needs {argv_key} (a list of strings) or {command_key} (a shell string)")
    return None


def _opt_str(raw: dict, key: str, problems: list):
    value = raw.get(key)
    if value is not None and not (isinstance(value, str) and "\0" not in value):
        problems.append(f"{key} must be a string")
        return None
    return value


def _env(value, where: str, problems: list) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where} must be an object of NAME: \"value\"")
        return {}
    out = {}
    for name, item in value.items():
        if not valid_env_name(name):
            problems.append(f"{where} name {name!r} is not a valid variable name")
        elif not isinstance(item, str) or "\0" in item:
            problems.append(f"{where} {name} must be a string without NUL bytes")
        else:
            out[name] = item
    return out


def _gpus(value, problems: list):
    if value is None:
        return None
    if (isinstance(value, list) and all(isinstance(g, (int, str)) and not isinstance(g, bool) for g in value)
            and all(str(g) and GPU_ID_CHARS.issuperset(str(g)) for g in value)):
        return [str(g) for g in value]
    problems.append("gpus must be a list of GPU indices or uuids")
    return None


def _signal(value, problems: list):
    try:
        return signal_number(value)
    except (TypeError, ValueError) as exc:
        problems.append(f"stop_signal: {exc}")
        return None


def _number(raw: dict, key: str, default: float, problems: list, minimum: float = 0.0) -> float:
    value = raw.get(key)
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        problems.append(f"{key} must be a number >= {minimum}")
        return float(default)
    return float(value)


def _health(value, problems: list):
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in HEALTH_TYPES:
        problems.append("health must be an object with type http, tcp or command")
        return None
    check = {"type": value["type"], "timeout": _number(value, "timeout", 2.0, problems),
             "interval": _number(value, "interval", 0.0, problems),
             "host": value.get("host") or "127.0.0.1"}
    if check["type"] in ("http", "tcp"):
        port = value.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            problems.append("health.port must be a port number")
        check["port"] = port
        path = value.get("path") or "/"
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " \r\n\0"):
            problems.append("health.path must start with / and hold no spaces or line breaks")
        check["path"] = path
    else:
        check["argv"] = _argv(value, problems, "argv", "command", "health: ")
    return check


def load_secrets(paths: AllocPaths) -> tuple:
    """(secrets, warning): env.secret as a dict; the file is tightened to 0600 when it was looser."""
    try:
        st = os.stat(paths.secret)
    except FileNotFoundError:
        return {}, None
    warning = None
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(paths.secret, 0o600)
        warning = f"env.secret was mode {stat.S_IMODE(st.st_mode):o}; tightened to 600"
    raw = read_json(paths.secret, {})
    problems = []
    secrets = _env(raw, "env.secret", problems)
    if problems:
        # never echo the values; names and shapes only
        raise NodeError("; ".join(problems), code="bad_secret", exit_status=2)
    return secrets, warning


def gpu_env(gpus) -> dict:
    """CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES for the spec's gpus (see the module docstring)."""
    if gpus is None:
        return {}
    if not gpus:
        return {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}
    joined = ",".join(gpus)
    return {"CUDA_VISIBLE_DEVICES": joined, "NVIDIA_VISIBLE_DEVICES": joined}


def workload_env(paths: AllocPaths, spec: dict, secrets: dict, launch: int, base=None) -> dict:
    """The workload's environment: inherited (minus SSH_*, FLEX_* and GPU variables), spec env,
    secrets, GPU variables, then flex's own variables (which nothing overrides)."""
    base = dict(os.environ if base is None else base)
    env = {k: v for k, v in base.items()
           if not k.startswith(STRIPPED_ENV_PREFIXES) and k not in STRIPPED_ENV}
    env.update(spec["env"])
    env.update(secrets)
    env.update(gpu_env(spec["gpus"]))
    env.update({"FLEX_ALLOC_ID": paths.alloc_id, "FLEX_ALLOC_DIR": paths.dir, "FLEX_LAUNCH": str(launch)})
    if spec.get("job"):
        env["FLEX_JOB"] = spec["job"]
    if spec["gpus"] is not None:
        env["FLEX_GPUS"] = ",".join(spec["gpus"])
    return env
