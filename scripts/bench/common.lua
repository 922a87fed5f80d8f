-- Shared by the wrk scripts of scripts/bench.sh: keys drawn from a 10,000-key space,
-- 100-byte values, and one JSON line of results printed when wrk finishes.
--
-- Settings come from the environment: BENCH_OP (put, get, stale, load), BENCH_KEYS
-- (10000), BENCH_START (0), BENCH_AUTH (an Authorization header value, if any). `load`
-- writes keys in order from BENCH_START, wrapping at KEYS (one wrk thread), to fill the
-- space.

local M = {}

M.op = os.getenv("BENCH_OP") or "put"
M.keys = tonumber(os.getenv("BENCH_KEYS") or "10000")
-- 100 bytes as stored: quorum-kv stores the JSON text, so a 98-character string with
-- its two quotes; etcd stores the raw bytes.
M.value = string.rep("v", 100)
M.json_value = '"' .. string.rep("v", 98) .. '"'

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
function M.base64(data)
    return ((data:gsub(".", function(x)
        local r, b = "", x:byte()
        for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
        return r
    end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
        if #x < 6 then return "" end
        local c = 0
        for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
        return b64chars:sub(c + 1, c + 1)
    end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

-- `headers` with the Authorization header of BENCH_AUTH, when it is set.
function M.with_auth(headers)
    local auth = os.getenv("BENCH_AUTH")
    if auth and auth ~= "" then
        headers["Authorization"] = auth
    end
    return headers
end

function M.key_name(i)
    return "bench/k" .. i
end

local counter = tonumber(os.getenv("BENCH_START") or "0") - 1
-- The next key index: sequential for `load`, uniform otherwise.
function M.next_key()
    if M.op == "load" then
        counter = (counter + 1) % M.keys
        return counter
    end
    return math.random(0, M.keys - 1)
end

function M.init_random()
    math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

-- One JSON line with everything scripts/bench.sh needs.
function M.done(summary, latency)
    local s = summary
    local secs = s.duration / 1e6
    io.write(string.format(
        '{"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,' ..
        '"non2xx":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
        s.requests, secs, s.requests / secs,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        s.errors.status, s.errors.connect, s.errors.read, s.errors.write, s.errors.timeout))
end

return M
