-- get.lua - GET /v1/kv/bench<N>, N uniform in [0, KEYS) (KEYS from the
-- environment, default 10000; bench/daemon.sh loads those keys first, so
-- every GET is a hit), keep-alive.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")
setup = common.setup
done = common.done

local keys = tonumber(os.getenv("KEYS") or "10000")

function init(args)
   common.init(args)
end

function request()
   return wrk.format("GET", "/v1/kv/bench" .. math.random(0, keys - 1))
end
