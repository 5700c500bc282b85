"""Runs the N processes of one multi-process JAX job on this machine and watches them as
one job: their output is forwarded line by line with a `[p<i>] ` prefix, and as soon as
one exits non-zero (or is killed) the launcher says which on stderr, e.g.

  process 1 of 2 (pid 1234) failed with exit code 1; stopping the others

kills the rest with SIGKILL (jax.distributed traps SIGTERM, and a process left waiting
in a collective for a peer that is gone would otherwise hang) and exits with that code
(128 + the signal number for a process killed by a signal). Ctrl-C or SIGTERM to the
launcher, or --timeout_s running out (exit code 124), kills every process.

  python launch/local_processes.py --num_processes=2 --devices_per_process=1 -- \
      --config=experiments/quickstart/config.py:smoke --workdir=/tmp/mh --stage=sweep

Everything after `--` is passed to launch/main.py, with --coordinator_address,
--num_processes and --process_id added for each process. `run` takes one command per
process, for jobs whose processes differ. (argparse, not absl flags: tests import this
module beside launch/main.py, whose flags share names with these.)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Mapping, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAIN = ROOT / "launch" / "main.py"
TIMEOUT_EXIT_CODE = 124


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main_commands(num_processes: int, port: int, args: Sequence[str],
                  python: str = sys.executable) -> list[list[str]]:
  """One `launch/main.py` command per process, joined through 127.0.0.1:port."""
  return [[python, str(MAIN), f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={num_processes}", f"--process_id={i}", *args]
          for i in range(num_processes)]


def cpu_env(devices_per_process: int, base: Mapping[str, str] | None = None
            ) -> dict[str, str]:
  """`base` (default: this environment) with JAX on CPU and that many fake devices."""
  env = dict(os.environ if base is None else base)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")]
      + [f"--xla_force_host_platform_device_count={devices_per_process}"])
  return env


def _forward(stream: IO[bytes], prefix: bytes, out: IO[bytes], lock: threading.Lock
             ) -> None:
  """Copies `stream` to `out` line by line; once `out` is closed (a reader such as
  `head` went away) the rest is read and dropped, so the process never blocks on it."""
  open_ = True
  for line in iter(stream.readline, b""):
    if open_:
      with lock:
        try:
          out.write(prefix + line)
          out.flush()
        except (BrokenPipeError, ValueError):
          open_ = False
  stream.close()


def _describe_exit(code: int) -> tuple[str, int]:
  """(text, launcher exit code) of a non-zero Popen return code."""
  if code < 0:
    try:
      name = signal.Signals(-code).name
    except ValueError:
      name = f"signal {-code}"
    return f"was killed by {name}", 128 - code
  return f"failed with exit code {code}", code


class _Stopped(Exception):
  """The launcher itself was asked to stop (SIGINT or SIGTERM)."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
  raise _Stopped(signum)


def run(commands: Sequence[Sequence[str]], *, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, timeout_s: float | None = None,
        poll_s: float = 0.1) -> int:
  """Starts one process per command (process i: `commands[i]`) and waits for all of
  them. Returns 0 when every one exits 0; otherwise, at the first one that exits
  non-zero, names it on stderr, kills the others with SIGKILL and returns its exit code
  (128 + signal when killed). After `timeout_s` every process is killed and the result
  is 124. SIGINT or SIGTERM to the launcher (when called from the main thread) kills
  every process. Output goes to this process's stdout, each line prefixed `[p<i>] `."""
  n = len(commands)
  out = sys.stdout.buffer
  lock = threading.Lock()
  procs: list[subprocess.Popen[bytes]] = []
  threads: list[threading.Thread] = []
  handlers = {}
  if threading.current_thread() is threading.main_thread():
    handlers = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGINT, signal.SIGTERM)}

  def say(text: str) -> None:
    with lock:
      out.flush()
      print(text, file=sys.stderr, flush=True)

  status = 0
  try:
    for i, cmd in enumerate(commands):
      p = subprocess.Popen(list(cmd), env=None if env is None else dict(env), cwd=cwd,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
      procs.append(p)
      t = threading.Thread(target=_forward, args=(p.stdout, f"[p{i}] ".encode(), out, lock),
                           daemon=True)
      t.start()
      threads.append(t)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
      codes = [p.poll() for p in procs]
      failed = next((i for i, c in enumerate(codes) if c), None)
      if failed is not None:
        text, status = _describe_exit(codes[failed])
        running = any(c is None for c in codes)
        say(f"process {failed} of {n} (pid {procs[failed].pid}) {text}"
            + ("; stopping the others" if running else ""))
        break
      if all(c == 0 for c in codes):
        break
      if deadline is not None and time.monotonic() > deadline:
        say(f"the job did not finish in {timeout_s:g}s; stopping all {n} processes")
        status = TIMEOUT_EXIT_CODE
        break
      time.sleep(poll_s)
  except _Stopped as e:
    say(f"launcher got {e}; stopping all {n} processes")
    status = 128 + e.signum
  finally:
    for s, h in handlers.items():
      signal.signal(s, h)
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    for p in procs:
      p.wait()
    for t in threads:
      t.join(timeout=5)
  return status


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="Runs launch/main.py as N JAX processes on this machine, as one job.",
      usage="%(prog)s [options] -- <launch/main.py flags>")
  parser.add_argument("--num_processes", type=int, default=2, help="Processes in the job.")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="Fake CPU devices per process.")
  parser.add_argument("--port", type=int, default=0,
                      help="Coordinator port on 127.0.0.1 (0: a free one).")
  parser.add_argument("--python", default=sys.executable,
                      help="Interpreter of the processes.")
  parser.add_argument("--timeout_s", type=float, default=None,
                      help="Kill the job after this many seconds (exit code 124).")
  argv = list(sys.argv[1:] if argv is None else argv)
  cut = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:cut])
  if args.num_processes < 1:
    parser.error(f"--num_processes={args.num_processes} must be >= 1")
  commands = main_commands(args.num_processes, args.port or free_port(), argv[cut + 1:],
                           args.python)
  return run(commands, env=cpu_env(args.devices_per_process), cwd=ROOT,
             timeout_s=args.timeout_s)


if __name__ == "__main__":
  sys.exit(main())
