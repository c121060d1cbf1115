"""Run untrusted, model-generated Python in a separate, confined process (HumanEval-style checks).

`run_program(code)` writes the code to a fresh temporary folder and starts ``python -I <this file> --child``.
That child confines *itself* with kernel mechanisms and only then compiles and runs the code in-process, so no
confinement step depends on the untrusted code's cooperation. Nothing is monkeypatched.

What it protects against (each layer is set up before the code runs):

- network: a fresh, empty network namespace (``unshare(CLONE_NEWNET)``, with a user namespace when not root: no
  interfaces except a down loopback); Landlock denies TCP bind/connect (kernel ABI >= 4); seccomp makes
  ``socket()`` fail with EACCES. Any one of these blocks a connection to 127.0.0.1 or the outside.
- writing outside its folder: Landlock allows file writes, creation, removal, renames and truncation only beneath
  the temporary folder (and writes to /dev/null). A root parent's child also drops every capability (bounding,
  ambient, effective, permitted, inheritable sets); it stays uid 0 only so it can read the interpreter's files.
  Without Landlock, a root parent's child switches to uid/gid 65534 (nobody) instead, so ordinary file
  permissions are the fence.
- new processes: seccomp denies fork/vfork/clone (except threads), execve/execveat, ptrace, unshare, setns,
  mount, bpf and io_uring; RLIMIT_NPROC (per user) also caps threads. A fork bomb fails at its first fork.
- resource exhaustion: wall-clock timeout (the whole process group is SIGKILLed), RLIMIT_CPU, RLIMIT_AS
  (`memory_mb`), RLIMIT_FSIZE, RLIMIT_NOFILE, no core dumps; output is capped at `max_output` bytes (the program
  is killed when it writes more).
- leaking secrets through the environment: the environment is replaced by a minimal one (PATH, HOME and TMPDIR
  pointing at the folder, LANG); Python runs in isolated mode (-I: no PYTHON* variables, no user site, no cwd
  on sys.path).
- leftovers: the child gets its own session/process group, dies with its parent (PR_SET_PDEATHSIG), and the
  group is killed and the folder deleted when `run_program` returns. Landlock (ABI >= 6) also stops the child
  from signalling processes outside its sandbox.

What it does NOT protect against:

- reading files: anything readable by the (possibly dropped) user can be read and printed to the output, which
  only comes back to the caller.
- kernel exploits, CPU side channels, or a host whose kernel lacks seccomp / namespaces / Landlock. A layer that
  cannot be set up is reported in ``ExecResult.isolation`` (what did work); if neither a network layer nor a
  filesystem layer can be established the program is not run at all (status "error").
- it is not a general-purpose container: the program shares the interpreter's installed packages and the host's
  CPU time (bounded by the limits above).
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import signal
import sys
from dataclasses import dataclass, field

# -----------------------------------------------------------------------------------------------------------------
# Parent side


@dataclass
class ExecResult:
    passed: bool
    status: str                 # passed | failed | timeout | memory | output_limit | error
    output: str                 # stdout + stderr, capped at max_output bytes
    seconds: float
    returncode: int | None = None
    isolation: tuple[str, ...] = field(default_factory=tuple)  # confinement layers that were set up


_SETUP_FAILED = 121  # exit code of a child that could not confine itself
_ISOLATION_TAG = "\x00nanochat-sandbox:"  # first line the child writes: the layers it set up


def run_program(code: str, timeout: float = 5.0, memory_mb: int = 256, max_output: int = 64_000,
                max_file_mb: int = 16, max_processes: int = 512, python: str | None = None,
                skip_layers: tuple[str, ...] = ()) -> ExecResult:
    """Run `code` as a Python program in a confined child process; see the module docstring.

    The program passes when it exits with status 0 within `timeout` seconds (wall clock). `skip_layers` (any of
    "netns", "landlock-fs", "landlock-net", "seccomp") leaves layers out; it exists so that tests can prove each layer on its own.
    """
    import selectors
    import shutil
    import subprocess
    import tempfile
    import time

    if not isinstance(code, str):
        raise TypeError("code must be a str")
    workdir = tempfile.mkdtemp(prefix="nanochat-exec-")
    start = time.monotonic()
    proc = None
    chunks: list[bytes] = []
    size = 0
    status = None
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        config = {"workdir": workdir, "cpu_seconds": max(1, int(timeout) + 1), "memory_mb": int(memory_mb),
                  "file_mb": int(max_file_mb), "processes": int(max_processes),
                  "skip": list(skip_layers)}
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([python or sys.executable, "-I", os.path.abspath(__file__), "--child",
                                 json.dumps(config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=workdir, env=env, start_new_session=True, close_fds=True)
        deadline = start + timeout
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            if not sel.select(timeout=left):
                continue
            block = os.read(fd, 65536)
            if not block:
                break
            chunks.append(block)
            size += len(block)
            if size > max_output + 4096:  # +4096: room for the isolation tag line
                status = "output_limit"
                break
        sel.close()
        if status is None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                status = "timeout"
    finally:
        if proc is not None:
            _kill_group(proc.pid)
            try:
                proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - it was SIGKILLed; nothing more to do
                pass
            proc.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - start
    raw = b"".join(chunks)
    isolation: tuple[str, ...] = ()
    if raw.startswith(_ISOLATION_TAG.encode()):
        tag, _, raw = raw.partition(b"\n")
        isolation = tuple(x for x in tag[len(_ISOLATION_TAG):].decode().split(",") if x)
    output = raw[:max_output].decode("utf-8", errors="replace")
    rc = proc.returncode if proc is not None else None
    if status is None:
        if rc == 0:
            status = "passed"
        elif rc == _SETUP_FAILED:
            status = "error"
        elif rc == -signal.SIGXCPU or rc == -signal.SIGKILL:
            status = "timeout"
        elif "MemoryError" in output[-2000:]:
            status = "memory"
        else:
            status = "failed"
    return ExecResult(passed=status == "passed", status=status, output=output, seconds=seconds, returncode=rc,
                      isolation=isolation)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -----------------------------------------------------------------------------------------------------------------
# Child side: confine this process, then run program.py

_NOBODY = 65534
_libc = None


def _get_libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _syscall(*args) -> int:
    res = _get_libc().syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def _prctl(option: int, arg2: int = 0, arg3=0) -> None:
    if _get_libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), arg3 if not isinstance(arg3, int)
                   else ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
CLONE_NEWUSER, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x40000000, 0x00010000

# Per-architecture facts: the audit arch value and the syscall numbers the filter denies.
_ARCH = {
    "x86_64": {"audit": 0xC000003E, "socket": 41, "fork": 57, "vfork": 58, "clone": 56, "clone3": 435,
               "execve": 59, "execveat": 322, "ptrace": 101, "unshare": 272, "setns": 308, "mount": 165,
               "bpf": 321, "io_uring_setup": 425},
    "aarch64": {"audit": 0xC00000B7, "socket": 198, "clone": 220, "clone3": 435, "execve": 221,
                "execveat": 281, "ptrace": 117, "unshare": 97, "setns": 268, "mount": 40, "bpf": 280,
                "io_uring_setup": 425},
}
_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446  # same on every architecture


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp_program(arch: dict) -> list[tuple[int, int, int, int]]:
    """Classic BPF: kill foreign ABIs; deny the listed syscalls with an errno; allow clone only for threads."""
    LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
    EPERM, EACCES, ENOSYS = 1, 13, 38
    prog = [(LD_ABS, 0, 0, 4),                     # seccomp_data.arch
            (JEQ, 1, 0, arch["audit"]),
            (RET, 0, 0, KILL),                     # 32-bit / foreign ABI (socketcall and friends): kill
            (LD_ABS, 0, 0, 0)]                     # seccomp_data.nr
    if arch["audit"] == 0xC000003E:
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, KILL)]  # x32 syscalls
    deny = {"socket": EACCES, "clone3": ENOSYS}    # ENOSYS: libc falls back to clone(), checked below
    for name in ("fork", "vfork", "execve", "execveat", "ptrace", "unshare", "setns", "mount", "bpf",
                 "io_uring_setup"):
        deny[name] = EPERM
    for name, errno_ in deny.items():
        if name in arch:
            prog += [(JEQ, 0, 1, arch[name]), (RET, 0, 0, ERRNO | errno_)]
    prog += [(JEQ, 1, 0, arch["clone"]), (RET, 0, 0, ALLOW),
             (LD_ABS, 0, 0, 16),                   # low 32 bits of args[0] = clone flags (little endian)
             (JSET, 0, 1, CLONE_THREAD), (RET, 0, 0, ALLOW),
             (RET, 0, 0, ERRNO | EPERM)]
    return prog


def _install_seccomp() -> None:
    arch = _ARCH.get(platform.machine())
    if arch is None or sys.byteorder != "little":
        raise OSError(f"no seccomp filter for {platform.machine()}")
    prog = _seccomp_program(arch)
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog))


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _install_landlock(workdir: str, fs: bool = True, net: bool = True) -> list[str]:
    """Writes only beneath `workdir` (+ /dev/null); no TCP; no signals or abstract sockets outside. Returns layers."""
    abi = _syscall(_LANDLOCK_CREATE, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    write = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << b for b in range(6, 13))  # write, remove, make_*
    if abi >= 2:
        write |= 1 << 13  # refer (renames/links across folders)
    if abi >= 3:
        write |= 1 << 14  # truncate
    attr, size, layers = _RulesetAttr(write if fs else 0, 0, 0), 8, ["landlock-fs"] if fs else []
    if abi >= 4 and net:
        attr.handled_access_net, size = 0b11, 16  # bind_tcp | connect_tcp, and no rule allows any port
        layers.append("landlock-net")
    if abi >= 6:
        attr.scoped, size = 0b11, 24  # abstract unix sockets and signals stay inside the sandbox
        layers.append("landlock-scope")
    if not layers:
        raise OSError("Landlock ABI too old for the requested restrictions")
    ruleset = _syscall(_LANDLOCK_CREATE, ctypes.byref(attr), size, 0)
    try:
        for path, access in ((workdir, write), ("/dev/null", 1 << 1)) if fs else ():
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(access, fd)
                _syscall(_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0)  # LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _syscall(_LANDLOCK_RESTRICT, ruleset, 0)
    finally:
        os.close(ruleset)
    return layers


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable capability sets of this process."""
    PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = 40
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
    data = (_CapData * 2)()
    if _get_libc().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def _confine(config: dict) -> list[str]:
    """Set up every available layer on this process; return their names. Raises OSError when too few work."""
    workdir, skip = config["workdir"], set(config.get("skip", ()))
    layers: list[str] = []
    problems: list[str] = []
    is_root = os.geteuid() == 0
    if "netns" not in skip:
        try:
            _syscall(_ARCH.get(platform.machine(), {}).get("unshare", -1),
                     CLONE_NEWNET if is_root else CLONE_NEWUSER | CLONE_NEWNET)
            layers.append("netns")
        except OSError as e:
            problems.append(f"network namespace: {e}")
    mb = 1 << 20
    limits = [(resource.RLIMIT_CPU, config["cpu_seconds"]), (resource.RLIMIT_AS, config["memory_mb"] * mb),
              (resource.RLIMIT_FSIZE, config["file_mb"] * mb), (resource.RLIMIT_NOFILE, 64),
              (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, config["processes"])]
    for which, value in limits:
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    layers.append("rlimits")
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before PR_SET_PDEATHSIG took effect
        raise OSError("parent process is gone")
    if not {"landlock-fs", "landlock-net"} <= skip:
        try:
            layers += _install_landlock(workdir, fs="landlock-fs" not in skip, net="landlock-net" not in skip)
        except OSError as e:
            problems.append(f"landlock: {e}")
    landlock_ok = "landlock-fs" in layers
    if is_root:
        if landlock_ok:
            _drop_capabilities()  # stays uid 0 (to read the interpreter's files) without any privilege
            layers.append("no-capabilities")
        else:  # no Landlock: ordinary file permissions become the filesystem fence
            for path in (workdir, os.path.join(workdir, "program.py")):
                os.chown(path, _NOBODY, _NOBODY)
            os.setgroups([])
            os.setgid(_NOBODY)
            os.setuid(_NOBODY)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # setuid clears it
            layers.append("uid-nobody")
    if "seccomp" not in skip:
        try:
            _install_seccomp()
            layers.append("seccomp")
        except OSError as e:
            problems.append(f"seccomp: {e}")
    if not {"netns", "landlock-net", "seccomp"} & set(layers):
        raise OSError("no network isolation available: " + "; ".join(problems))
    if not {"landlock-fs", "uid-nobody"} & set(layers):  # an unprivileged user on a kernel without Landlock
        raise OSError("no filesystem confinement available: " + "; ".join(problems))
    return layers


def _child_main(config: dict) -> None:
    import traceback  # imported before confinement: later imports may not be readable

    workdir = config["workdir"]
    path = os.path.join(workdir, "program.py")
    layers: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        layers = _confine(config)
        os.chdir(workdir)
    except Exception as e:  # noqa: BLE001 - report and refuse to run the program
        sys.stdout.write(f"{_ISOLATION_TAG}{','.join(layers)}\nsandbox setup failed: {type(e).__name__}: {e}\n")
        sys.stdout.flush()
        os._exit(_SETUP_FAILED)
    sys.stdout.write(f"{_ISOLATION_TAG}{','.join(layers)}\n")
    sys.stdout.flush()
    sys.argv = [path]
    sys.path[0:0] = [workdir]
    try:
        exec(compile(source, path, "exec"), {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - a traceback without this bootstrap's frame, exit status 1
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.exit(1)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child_main(json.loads(sys.argv[2]))
