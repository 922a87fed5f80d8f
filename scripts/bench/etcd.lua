-- wrk script for etcd's HTTP/JSON gateway (v3 API; base64 keys and values). See
-- common.lua for settings. Reads are linearizable unless BENCH_OP=stale (serializable).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local c = require("common")

local put_bodies, range_bodies = {}, {}

function init(args)
    c.init_random()
    local value = c.base64(c.value)
    local serializable = c.op == "stale" and ',"serializable":true' or ""
    for i = 0, c.keys - 1 do
        local key = c.base64(c.key_name(i))
        put_bodies[i] = '{"key":"' .. key .. '","value":"' .. value .. '"}'
        range_bodies[i] = '{"key":"' .. key .. '"' .. serializable .. "}"
    end
end

local headers = c.with_auth({ ["Content-Type"] = "application/json" })

function request()
    local i = c.next_key()
    if c.op == "put" or c.op == "load" then
        return wrk.format("POST", "/v3/kv/put", headers, put_bodies[i])
    end
    return wrk.format("POST", "/v3/kv/range", headers, range_bodies[i])
end

done = c.done
