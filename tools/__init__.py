"""Developer tooling (CI report builders); not shipped with the tracelet package."""
