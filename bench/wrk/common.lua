-- common.lua - shared by put.lua and get.lua: a per-thread random seed and
-- a done() that prints one machine-readable line for bench/daemon.sh:
--   RESULT requests=N duration_us=N p50_us=N p99_us=N non2xx=N errors=N
local M = {}

local counter = 0
function M.setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

function M.init(args)
   math.randomseed(os.time() * 1000 + (tid or 0))
end

function M.done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.status, e.connect + e.read + e.write + e.timeout))
end

return M
