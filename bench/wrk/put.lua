-- put.lua - PUT /v1/kv/bench<N> with a 100-byte value, N uniform in
-- [0, KEYS) (KEYS from the environment, default 100000), keep-alive.
-- DELAY_MS (default 0) paces each connection: that long between its
-- requests, for a steady load instead of the most the server takes.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")
setup = common.setup
done = common.done

local keys = tonumber(os.getenv("KEYS") or "100000")
local value = string.rep("v", 100)
local pause = tonumber(os.getenv("DELAY_MS") or "0")

function init(args)
   common.init(args)
end

function request()
   local k = math.random(0, keys - 1)
   return wrk.format("PUT", "/v1/kv/bench" .. k, nil, value)
end

if pause > 0 then
   function delay()
      return pause
   end
end
