"""A resident pre-imported process (a "zygote") that runs CLI commands without the import cost.

Why: every ``pymigrate`` command pays ~100 ms (more on a loaded host) of interpreter start and
imports before its own work; ``runc run -d`` takes ~35 ms in all (issue 17). A zygote imports the
CLI once and forks a worker per command, which runs it exactly as the program would (same
``migrate.cli.main``, argv, environment, cwd, umask and stdio fds, handed over SCM_RIGHTS).

- ``front``: the ``pymigrate`` entry point. Tiny (no heavy imports); with ``PYMIGRATE_ZYGOTE=1``
  it hands an eligible command to a zygote, else (or when none answers) runs it itself and may
  start a zygote for next time. Off by default (see front's docstring for why).
- ``wire``: what both sides share: the socket's place, the fingerprint a zygote must match, framing.
- ``server``: the zygote: preload, accept, check, fork, relay signals and the exit code, idle exit.
"""
