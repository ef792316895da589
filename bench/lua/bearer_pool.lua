-- GET with "Authorization: Bearer <token>", tokens taken round-robin from a file (one a line).
-- Every request is formatted once in init(), so the per-request cost is a table lookup.
-- wrk ... -s bearer_pool.lua URL -- <tokens-file>
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local pool = {}
local count = 0
local index = 0

function init(args)
  for token in io.lines(args[1]) do
    if #token > 0 then
      count = count + 1
      pool[count] = wrk.format("GET", nil, { Authorization = "Bearer " .. token })
    end
  end
  if count == 0 then
    error("no tokens in " .. args[1])
  end
end

function request()
  index = index % count + 1
  return pool[index]
end
