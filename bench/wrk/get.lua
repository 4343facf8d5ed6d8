-- wrk script: GET a member's balance or statement, for random members.
-- Usage: wrk ... -s get.lua URL -- <path template with %s for the member> <token> <prefix> <members>

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  template, token, prefix, members = args[1], args[2], args[3], tonumber(args[4])
  statuses = {}
  math.randomseed(os.time() * 1000 + 7 * thread_id)
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  local member = string.format("%s%04d", prefix, math.random(members) - 1)
  return wrk.format("GET", string.format(template, member))
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do table.insert(parts, string.format('"%s":%d', status, n)) end
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"p50_ms":%.3f,"p99_ms":%.3f,"errors":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ",")))
  -- The whole latency histogram, [[microseconds, count], ...], so runs can be merged.
  local buckets = {}
  for i = 1, #latency do
    local value, count = latency(i)
    buckets[i] = string.format("[%d,%d]", value, count)
  end
  io.write("HISTOGRAM [" .. table.concat(buckets, ",") .. "]\n")
end
