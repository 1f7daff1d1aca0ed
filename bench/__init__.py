"""mxfs benchmark harness: `python -m bench` (make bench). See bench/README.md."""
