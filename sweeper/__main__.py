"""`python -m sweeper [-m] key=value ...` (or the console script `sr-sweep`, which Hydra's tab
completion needs): run one job, or a grid with -m."""
import sys

from sweeper.naming import sweep_name_from_argv


def with_sweep_name(argv: list[str]) -> list[str]:
    """A multirun gets a sweep name derived from its command line unless one is given."""
    multirun = any(a in ("-m", "--multirun") for a in argv[1:])
    named = any(a.startswith("sweep_name=") for a in argv[1:])
    if multirun and not named:
        return argv + [f"sweep_name='{sweep_name_from_argv(argv[1:])}'"]  # quoted: holds '=' and ','
    return argv


def main() -> None:
    sys.argv = with_sweep_name(sys.argv)
    try:
        from sweeper.app import main as app

        app()
    except KeyboardInterrupt:  # Ctrl-C outside a job's training (a job saves its state: sweeper.preemption)
        print("interrupted (Ctrl-C); run the same command again to resume: finished jobs are skipped, interrupted "
              "ones resume from their checkpoints", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
