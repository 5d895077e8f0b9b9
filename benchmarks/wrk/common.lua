-- Shared helpers for the edgeship wrk scripts (loaded with dofile by assignment.lua / reports.lua).
--
-- Devices file: one device a line, "<device id> <credential> <etag>" (written by
-- benchmarks/server_bench.py after it registered the devices through the HTTP API).
-- Every script counts responses by status per thread and done() prints one machine-readable
-- line, "edgeship-wrk-statuses <status>=<count> ...", next to wrk's own --latency output.

local common = {}

local threads = {}
local next_id = 0

--- Read the devices file into a list of {id=, credential=, etag=}.
function common.read_devices(path)
  local devices = {}
  local handle = assert(io.open(path, "r"), "cannot open devices file " .. tostring(path))
  for line in handle:lines() do
    local id, credential, etag = line:match("^(%S+)%s+(%S+)%s*(%S*)")
    if id then
      devices[#devices + 1] = {id = id, credential = credential, etag = etag}
    end
  end
  handle:close()
  assert(#devices > 0, "no devices in " .. path)
  return devices
end

--- setup(thread) for wrk: number the threads and keep them for done().
function common.setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  threads[#threads + 1] = thread
end

--- response(status, headers, body) for wrk: count statuses in this thread.
function common.response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

--- done(summary, latency, requests) for wrk: print the status counts summed over threads.
function common.done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses") or {}
    for status, n in pairs(counts) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    parts[#parts + 1] = string.format("%d=%d", status, n)
  end
  table.sort(parts)
  io.write("edgeship-wrk-statuses ", table.concat(parts, " "), "\n")
end

return common
