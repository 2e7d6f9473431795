"""`detok <verb>`: argparse -> config -> one call into `detok.runs`; the error boundary is in `main`."""
