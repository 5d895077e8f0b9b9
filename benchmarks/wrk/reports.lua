-- wrk script: POST /v1/reports with BATCH reports per request, each report with a unique id,
-- cycling over registered devices with their Bearer credentials.
--
--   wrk ... -s reports.lua http://127.0.0.1:PORT -- DEVICES_FILE TEMPLATE_FILE BATCH RUN_ID
--
-- TEMPLATE_FILE holds one report as JSON whose id is the placeholder "@ID@". Ids are
-- RUN_ID-<thread>-<request>-<k>, so no report is ever a duplicate (even across runs).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

setup = common.setup
response = common.response
done = common.done

function init(args)
  devices = common.read_devices(args[1])
  local handle = assert(io.open(args[2], "r"), "cannot open report template " .. tostring(args[2]))
  template = handle:read("*a"):gsub("%s+$", "")
  handle:close()
  batch = tonumber(args[3]) or 1
  prefix = (args[4] or "run") .. "-" .. tostring(thread_id or 0) .. "-"
  statuses = {}
  counter = 0
  index = ((thread_id or 0) * 7919) % #devices
  headers = {["Content-Type"] = "application/json"}
end

function request()
  counter = counter + 1
  index = index % #devices + 1
  local device = devices[index]
  local items = {}
  for k = 1, batch do
    local id = prefix .. counter .. "-" .. k
    items[k] = template:gsub("@ID@", id, 1)
  end
  headers["Authorization"] = "Bearer " .. device.credential
  return wrk.format("POST", "/v1/reports", headers, '{"reports":[' .. table.concat(items, ",") .. "]}")
end
