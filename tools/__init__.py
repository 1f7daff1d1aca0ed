"""Commands for people trying mxfs out (`python -m tools.demo`); no library imports them."""
