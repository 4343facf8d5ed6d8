-- wrk script: POST exchanges between random members, each with its own Idempotency-Key.
-- Usage: wrk ... -s post.lua URL -- <path> <token> <member-prefix> <members> <run-id> [<provider-prefix>]
-- With <provider-prefix> ("<linked community>/member-"), <path> is an intertrades path and each
-- request is an intertrade from a random member of the linked community.
-- Prints one JSON line at the end (requests, seconds, latency percentiles, counts by status)
-- and one HISTOGRAM line (the latency histogram, to merge runs).

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  path, token, prefix = args[1], args[2], args[3]
  members, run, provider_prefix = tonumber(args[4]), args[5], args[6]
  counter = 0
  statuses = {}
  math.randomseed(os.time() * 1000 + thread_id)
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local a = math.random(members) - 1
  local b = math.random(members - 1) - 1
  if b >= a then b = b + 1 end
  local body = string.format(
    '{"provider":"%s%04d","receiver":"%s%04d","amount":%d,"description":"bench"}',
    provider_prefix or prefix, a, prefix, b, math.random(1, 100))
  wrk.headers["Idempotency-Key"] = run .. "-" .. thread_id .. "-" .. counter
  return wrk.format("POST", path, nil, body)
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
