-- prelude.lua: what several scripts share. service/redis/scripts.py puts it before each script.
--
-- Scripts touch only the keys their caller declares in KEYS; channel names are not keys, so they
-- come in ARGV, built by service/keys.py like every other name.

-- Publishes `message` on `channel`: with SPUBLISH if the channel is sharded (on Redis Cluster, a
-- name that begins with its partition's hash tag, the slot of the keys the script was called
-- with: service.keys.is_sharded_channel), else with PUBLISH. The number of receivers: exact for a
-- sharded channel, whose subscribers hold a connection to this node.
local function publish(channel, message)
  return redis.call(string.byte(channel, 1) == 123 and 'SPUBLISH' or 'PUBLISH', channel, message)
end

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

-- Publishes a job's state change on its channel if someone follows the job (the record's
-- `watched`); the message is built only then.
local function publish_state(watched, channel, job_id, state, attempt, seq)
  if watched then publish(channel, state_message(job_id, state, attempt, seq)) end
end

-- The states a live job can be in (service.models.ACTIVE_STATES).
local LIVE = {queued = true, retrying = true, running = true}

-- A record's integer field as a number; `default` when it is absent or not an integer. (tonumber
-- alone would take "NaN", "1e3" and "0x10".)
local function to_int(value, default)
  if value and string.match(value, '^%-?%d+$') and #value <= 16 then return tonumber(value) end
  return default
end

-- What is wrong with a record's integer fields (`names`, their `values` as HMGET gave them; absent
-- ones are fine): {"<field>: \"<value>\" is not an integer", ...} and the fields' names. The
-- pattern is the one Python's int() and the Lua scripts' tonumber() agree on.
local function bad_integers(names, values)
  local problems, bad = {}, {}
  for i, name in ipairs(names) do
    local value = values[i]
    if value and not (string.match(value, '^%-?%d+$') and #value <= 16) then
      problems[#problems + 1] = name .. ': ' .. string.format('%q', string.sub(value, 1, 40)) .. ' is not an integer'
      bad[#bad + 1] = name
    end
  end
  return problems, bad
end

-- A history entry (service.models.AttemptInfo) of attempt `n`, from the record's worker and start.
local function attempt_entry(n, worker, started, state, note, finished)
  started = to_int(started, nil)
  return '{"attempt":' .. string.format('%d', n) .. ',"worker":' .. (worker and worker ~= '' and cjson.encode(worker)
    or 'null') .. ',"started_at_ms":' .. (started and string.format('%d', started) or 'null') ..
    ',"finished_at_ms":' .. (finished and string.format('%d', finished) or 'null') .. ',"state":"' .. state ..
    '","note":' .. cjson.encode(note) .. '}'
end

-- `progress` (a ProgressUpdate's JSON, as pydantic writes it: its own "status" comes before any nested
-- one) with its status `status`; nil when it has that status already, or no status to change.
local function with_status(progress, status)
  if not progress or not status then return nil end
  local current = string.match(progress, '"status":"([%w_]*)"')
  if not current or current == status then return nil end
  return (string.gsub(progress, '"status":"[%w_]*"', '"status":"' .. status .. '"', 1))
end
