"""`sdcpu serve`: the HTTP image service. app (routes, errors, auth), schemas (what each API accepts), queue (the
worker thread and its bounded queue), metrics (Prometheus), page.html (the web page at `/`)."""
