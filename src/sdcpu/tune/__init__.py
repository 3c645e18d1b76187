"""`sdcpu tune`: measure which configuration is fastest on this machine and save it as a profile `auto` uses."""
