-- wrk script: Counter.Add with a plain JSON body through a gate's HTTP API, spread over
-- 1,000 counters. Usage (goverse demo running):
--   wrk -t2 -c64 -d10s --latency -s scripts/bench/http-add.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.body = '{"value":1}'
wrk.headers["Content-Type"] = "application/json"

request = function()
  local path = "/api/v1/objects/call/Counter/wrk-" .. math.random(0, 999) .. "/Add"
  return wrk.format(nil, path)
end
