-- Plain GET of the URL given to wrk (reference rows: upstream direct, plain proxy).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
