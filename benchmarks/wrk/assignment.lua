-- wrk script: GET /v1/devices/<id>/assignment?model=<model>, cycling over registered devices,
-- each request with its own device's Bearer credential.
--
--   wrk ... -s assignment.lua http://127.0.0.1:PORT -- DEVICES_FILE MODEL [etag]
--
-- With "etag" every request sends If-None-Match with the device's current ETag (expects 304s);
-- without it no conditional header is sent (expects 200s with the full assignment document).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

setup = common.setup
response = common.response
done = common.done

function init(args)
  devices = common.read_devices(args[1])
  model = args[2]
  conditional = args[3] == "etag"
  statuses = {}
  -- threads start at different devices so they do not walk the list in lockstep
  index = ((thread_id or 0) * 7919) % #devices
end

function request()
  index = index % #devices + 1
  local device = devices[index]
  local headers = {Authorization = "Bearer " .. device.credential}
  if conditional then
    headers["If-None-Match"] = '"' .. device.etag .. '"'
  end
  return wrk.format("GET", "/v1/devices/" .. device.id .. "/assignment?model=" .. model, headers)
end
