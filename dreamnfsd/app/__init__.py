"""The application layer: command-line entry points, config composition and checks, runs, sweeps, reports."""
