-- wrk script for `cargo xtask bench`: prints the run's figures as one JSON line (prefix WRK_JSON)
-- so the bench parses numbers instead of wrk's prose, including p99.9 which --latency omits.
-- Optional script arguments (after `--`): METHOD [BODY_BYTES], e.g. `-- POST 1024` sends a
-- 1024-byte body on every request.

function init(args)
  if args[1] ~= nil then
    wrk.method = args[1]
  end
  if args[2] ~= nil then
    wrk.body = string.rep("x", tonumber(args[2]))
    wrk.headers["Content-Type"] = "application/octet-stream"
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
