-- wrk script of bench/run.sh: POST a 1 MiB body (echoed by the backends)
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
