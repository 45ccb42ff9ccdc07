"""Speed and memory benchmarks; results and how to read them: ``benchmarks/README.md``."""
