-- POST a fixed form body with HTTP Basic client authentication.
-- wrk ... -s post_form.lua URL -- <body> <basic-credentials-b64>
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

function init(args)
  wrk.method = "POST"
  wrk.body = args[1]
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["Authorization"] = "Basic " .. args[2]
end
