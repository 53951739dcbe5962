"""The `doppel` command. The only part of `doppel/` that imports the services, lazily."""
