-- wrk script of bench/run.sh: every request carries the next bearer token of $TOKENS (one JWT
-- per line; no file, no Authorization header). Each of the $WRK_THREADS threads keeps every
-- WRK_THREADS-th line, starting at its own: no two threads send the same token, and a token is
-- sent again only after the whole file has been. done() prints one RESULT line.
local next_thread = 0

function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  tokens = {}
  local file = os.getenv("TOKENS")
  local threads = tonumber(os.getenv("WRK_THREADS") or "1")
  if file and file ~= "" then
    local line_no = 0
    for line in io.lines(file) do
      if line_no % threads == thread_index then
        tokens[#tokens + 1] = "Bearer " .. line
      end
      line_no = line_no + 1
    end
  end
  position = 0
end

function request()
  if #tokens > 0 then
    position = position % #tokens + 1
    wrk.headers["Authorization"] = tokens[position]
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d non2xx=%d sockerr=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
