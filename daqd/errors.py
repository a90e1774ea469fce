"""Exceptions that name a person's mistake (configuration, arguments, URIs)."""


class UsageProblem(ValueError):
    """Bad input from a person: reported as one line, exit status 2."""

    #: The command line's exit status for this problem.
    exit_status = 2


class SourceError(UsageProblem):
    """A source URI that cannot be parsed or opened."""
