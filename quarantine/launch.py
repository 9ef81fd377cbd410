"""How `quarantine deliver` starts in a venv: bin/quarantine has the venv's Python
run this module's bytecode (cached by pip at install) without `site`, and this
loads the mail path's modules straight from their cached bytecode, runs deliver
and leaves without the interpreter's teardown.

A module is taken from its cache only when the import system would take it too:
this Python's magic number, a timestamp cache stamped with the source's mtime
and size. Anything else (a module edited after install, a hash-based or missing
cache, a venv sharing the system's packages, an error while loading) hands over
to the script, which starts the ordinary way and defers with one line on a
broken install. docs/benchmarks.md has the figures.
"""

import sys
from marshal import loads
from posix import O_CLOEXEC, O_RDONLY, _exit, close, execv, fstat, read, stat
from posix import open as open_fd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType

PACKAGE = "quarantine"
# What `quarantine deliver` imports, in an order that has each module's own
# imports loaded before it (tests/test_launcher.py checks that none of them
# goes through the import system). The lookup of EXT@HOST adds vpopmail.
MAIL_PATH = ("fastos", "qmail", "deliver", "configrecords", "config", "message", "verdict",
             "maildir", "junklog")  # fmt: skip
LOOKUP = ("vpopmail",)
SHARED = b"include-system-site-packages=true"
MAGIC: bytes = getattr(sys.modules["_frozen_importlib_external"], "MAGIC_NUMBER", b"none")


def current(source: str, header: bytes) -> bool:
    """Is `header` (a cache's first 16 bytes) what the import system accepts
    for `source` without recompiling: PEP 552's timestamp form, this Python's
    magic number, the source's mtime and size?"""
    try:
        st = stat(source)
    except OSError:
        return False
    stamp = (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    size = (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    return header == MAGIC + b"\0\0\0\0" + stamp + size


def read_file(path: str, limit: int) -> bytes:
    """The first `limit` bytes of `path` (all of it when shorter), by the
    posix calls: open() would add a buffer and four system calls a file."""
    fd = open_fd(path, O_RDONLY | O_CLOEXEC)
    try:
        return read(fd, min(limit, fstat(fd).st_size))
    finally:
        close(fd)


def cached_code(source: str, cached: str) -> "CodeType | None":
    """The code cached for `source` when the cache is current, else None."""
    try:
        data = read_file(cached, 1 << 24)
    except OSError:
        return None
    if not current(source, data[:16]):
        return None
    code = loads(memoryview(data)[16:])  # noqa: S302 - the import system reads it alike
    return code if type(code) is type(current.__code__) else None


def load(directory: str, name: str) -> bool:
    """Make `quarantine.name` (the package itself for "") from its cache,
    as the import system would; False when the cache cannot be used."""
    leaf = name or "__init__"
    source = f"{directory}/{leaf}.py"
    cached = f"{directory}/__pycache__/{leaf}.{sys.implementation.cache_tag}.pyc"
    code = cached_code(source, cached)
    if code is None:
        return False
    full = f"{PACKAGE}.{name}" if name else PACKAGE
    module = type(sys)(full)
    module.__file__ = source
    module.__dict__["__cached__"] = cached
    module.__package__ = PACKAGE
    if not name:
        module.__path__ = [directory]
    sys.modules[full] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - the module's own code, checked as above
    except BaseException:
        del sys.modules[full]
        raise
    if name:
        setattr(sys.modules[PACKAGE], name, module)
    return True


def hand_over(argv: "list[str]") -> None:
    """Run the script the ordinary way (still without `site` in a venv of its
    own packages); exit 111 with one line if even that cannot start."""
    try:
        execv(sys.executable, [sys.executable, "-S", "-P", *argv])
    except OSError as exc:
        sys.stdout.write(f"quarantine: cannot start {sys.executable}: {exc.strerror} (#4.3.0)\n")
        sys.stdout.flush()
    _exit(111)


def start(argv: "list[str]") -> None:
    """argv: the script's path, then `deliver` and its options."""
    if argv[1:2] != ["deliver"]:  # only bin/quarantine runs this, and only so
        sys.stdout.write("quarantine: launch.py runs `SCRIPT deliver ...` only (#4.3.5)\n")
        sys.stdout.flush()
        _exit(111)
    directory = __file__.rpartition("/__pycache__/")[0]
    venv = argv[0].rpartition("/")[0] + "/.."
    try:
        shared = SHARED in read_file(venv + "/pyvenv.cfg", 1 << 16).lower().replace(b" ", b"")
    except OSError:  # unreadable to this uid: the venv's own packages, as most venvs
        shared = False
    try:
        header = read_file(__file__, 16)
    except OSError:
        header = b""
    if shared or not current(directory + "/launch.py", header):
        hand_over(argv)  # `site` is needed, or this file changed since pip cached it
    sys.path.append(directory.rpartition("/")[0])
    lookup = not any(arg.startswith("--maildir") for arg in argv)
    wanted = MAIL_PATH + LOOKUP if lookup else MAIL_PATH
    try:
        for name in ("", *wanted):
            if not load(directory, name):
                break  # the rest through the import system, which checks them too
        from quarantine.deliver import main
    except BaseException:
        hand_over(argv)
    _exit(main(argv[2:]))


if __name__ == "__main__":
    start(sys.argv[1:])
