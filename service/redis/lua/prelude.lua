-- prelude.lua: what several scripts share. service/redis/scripts.py puts it before each script.
--
-- Scripts touch only the keys their caller declares in KEYS; channel names are not keys (a
-- PUBLISH reaches every subscriber whatever the node), so they come in ARGV, built by
-- service/keys.py like every other name.

-- The states a job never leaves (service.models.TERMINAL_STATES).
local TERMINAL = {succeeded = true, failed = true, timed_out = true, cancelled = true}

-- A state message of a job channel, as service.client.handle reads it:
-- {"type":"state","job_id":"<id>","state":"<state>","attempt":<n>,"seq":<n>}
local function state_message(job_id, state, attempt, seq)
  return '{"type":"state","job_id":' .. cjson.encode(job_id) .. ',"state":"' .. state .. '","attempt":' ..
    attempt .. ',"seq":' .. seq .. '}'
end

-- The record fields of a started attempt (the take script and a submit's hand-off write them),
-- followed by `extra` (field, value, ...). The caller HSETs them in one command.
local function attempt_fields(worker, attempt, seq, now, extra)
  local fields = {'state', 'running', 'attempt', attempt, 'worker', worker, 'started_at_ms', now, 'seq', seq}
  for _, value in ipairs(extra) do fields[#fields + 1] = value end
  return fields
end

-- Publishes a job's change on its channel if someone follows the job (the record's `watched`).
local function publish_if_watched(watched, channel, message)
  if watched then redis.call('PUBLISH', channel, message) end
end
