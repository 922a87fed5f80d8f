-- wrk script for quorum-kv's API v1 (see common.lua for settings).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local c = require("common")

function init(args)
    c.init_random()
end

local put_headers, get_headers = c.with_auth({ ["Content-Type"] = "application/json" }), c.with_auth({})

function request()
    local path = "/v1/kv/" .. c.key_name(c.next_key())
    if c.op == "put" or c.op == "load" then
        return wrk.format("PUT", path, put_headers, c.json_value)
    elseif c.op == "stale" then
        return wrk.format("GET", path .. "?consistency=stale", get_headers)
    end
    return wrk.format("GET", path, get_headers)
end

done = c.done
