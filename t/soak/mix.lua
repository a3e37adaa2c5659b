-- wrk script of t/soak/soak.t: a mixed workload, and a check of every
-- response: status 200 and a body byte for byte as expected for its
-- length (ngxshm-echo's X-Echo-Size pattern "abc...zabc...", or the
-- echoed POST body "ppp...").
--
-- A cycle of 20 requests, in this order per connection thread:
--   10 GET, 128-byte response           (X-Echo-Size: 128)
--    4 GET, 64 KiB response             (X-Echo-Size: 65536)
--    3 POST, 1 KiB body, echoed back
--    2 POST, 8 KiB body, echoed back
--    1 POST, 40 KiB body, echoed back   (beyond client_body_buffer_size:
--                                        nginx buffers it in a file)

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

local function gen(size)
    local t = {}
    for i = 0, size - 1 do t[#t + 1] = string.char(97 + i % 26) end
    return table.concat(t)
end

local function post(size)
    return wrk.format("POST", "/soak/post", {
        ["Content-Type"] = "application/octet-stream",
    }, string.rep("p", size))
end

function init(args)
    local small = wrk.format("GET", "/soak/small", { ["X-Echo-Size"] = "128" })
    local big = wrk.format("GET", "/soak/big", { ["X-Echo-Size"] = "65536" })

    reqs = {}
    for i = 1, 10 do table.insert(reqs, small) end
    for i = 1, 4 do table.insert(reqs, big) end
    for i = 1, 3 do table.insert(reqs, post(1024)) end
    for i = 1, 2 do table.insert(reqs, post(8192)) end
    table.insert(reqs, post(40960))

    -- interleave: small, big and posts spread over the cycle
    local order = { 1, 11, 15, 2, 3, 18, 12, 4, 16, 5, 20, 13, 6, 7, 17,
                    14, 8, 19, 9, 10 }
    local mixed = {}
    for i, k in ipairs(order) do mixed[i] = reqs[k] end
    reqs = mixed

    n = 0
    ok = 0
    bad_status = 0
    bad_body = 0
    first_bad = ""
    expected = { [128] = gen(128), [65536] = gen(65536),
                 [1024] = string.rep("p", 1024),
                 [8192] = string.rep("p", 8192),
                 [40960] = string.rep("p", 40960) }
end

function request()
    n = n % #reqs + 1
    return reqs[n]
end

function response(status, headers, body)
    if status ~= 200 then
        bad_status = bad_status + 1
        if first_bad == "" then first_bad = "status " .. status end
    elseif expected[#body] ~= body then
        bad_body = bad_body + 1
        if first_bad == "" then first_bad = "length " .. #body end
    else
        ok = ok + 1
    end
end

function done(summary, latency, requests)
    local o, bs, bl, fb = 0, 0, 0, ""
    for _, t in ipairs(threads) do
        o = o + t:get("ok")
        bs = bs + t:get("bad_status")
        bl = bl + t:get("bad_body")
        if fb == "" then fb = t:get("first_bad") end
    end
    local e = summary.errors
    io.write(string.format(
        "SOAK requests=%d duration_us=%d bytes=%d ok=%d bad_status=%d "
        .. "bad_body=%d connect=%d read=%d write=%d status=%d "
        .. "timeout=%d p50_us=%d p99_us=%d max_us=%d first_bad=%s\n",
        summary.requests, summary.duration, summary.bytes, o, bs, bl,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99), latency.max,
        fb == "" and "-" or fb:gsub(" ", "_")))
end
