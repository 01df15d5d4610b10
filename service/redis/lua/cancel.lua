-- cancel.lua: cancel a job. A waiting one (queued, or retrying after a backoff) is cancelled here
-- and leaves its queue; a running one gets the durable flag and a push to every worker.
--
-- KEYS[1]  record       <ns>:job:<id>              hash, the live JobRecord
-- KEYS[2]  result       arq:result:<ns>:<id>       string, an ended job's final record
-- KEYS[3]  checkpoint   <ns>:checkpoint:<id>       string, deleted with a waiting job
-- KEYS[4]  stream       <ns>:stream:<id>           a generator's output of an earlier attempt: it gets its end marker
-- KEYS[5]  queue        the job's queue (optional: the caller learns it from a first call)
-- ARGV[1]  reason
-- ARGV[2]  now ms
-- ARGV[3]  the service's result TTL s (when the job's request sets no result_ttl_s)
-- ARGV[4]  arq job id (the job's member in its queue)
-- ARGV[5]  the ErrorInfo JSON a job cancelled while waiting ends with
-- ARGV[6]  the job channel (<ns>:ch:job:<id>)
-- ARGV[7]  the cancel channel (<ns>:ch:cancel)
-- ARGV[8]  job id
-- ARGV[9]  the cancel's time (ms), ARGV[10] its signature ('' when unsigned; service.signing)
-- ARGV[11] arq's result summary of a job cancelled while waiting (service.arqformat.summary), JSON
-- ARGV[12] arq's function name (service.arqformat.FUNCTION)
-- ARGV[13] the status its latest progress update takes (service.models.FINAL_PROGRESS_STATUS)
-- Reply: {what, the state it was in}, what being
--   'missing'    no record, live or final;
--   'finished'   it had ended (state: how; '' if its final record is unreadable): nothing changed;
--   'running'    the flag is set and the workers were told ({"job_id", "reason", "generation": the
--                record's enqueued_at_ms, "ts", "sig"}): the outcome follows;
--   'cancelled'  it was waiting: it is cancelled and will never run;
--   'queue'      it is waiting in the queue named as the state, and KEYS[5] did not name that
--                queue: nothing changed; call again with it.
--
-- A job cancelled while waiting ends as the settle script ends a job: it keeps one key, its final
-- record in arq's result (with the result TTL, less the request, which arq's kwargs hold), and
-- its record hash and checkpoint are deleted; a stream an earlier attempt wrote gets its end marker;
-- its latest progress update takes the status `cancelled` (one change more, published first).

local record = KEYS[1]
local live = redis.call('HMGET', record, 'state', 'watched', 'queue', 'request', 'attempt', 'enqueued_at_ms')
local state = live[1]
if not state then
  local ended = redis.call('GET', KEYS[2])
  if not ended then return {'missing', ''} end
  local ok, final = pcall(cjson.decode, ended)
  local how = ok and type(final) == 'table' and type(final.actionq) == 'table' and final.actionq.state
  return {'finished', type(how) == 'string' and how or ''}
end
if TERMINAL[state] then return {'finished', state} end
if state == 'running' then
  redis.call('HSET', record, 'cancel_requested', ARGV[1])
  -- The push names the job's generation (when it was submitted), so that a worker that remembers
  -- it for a job it has not started yet never applies it to a later job reusing the id.
  local generation = to_int(live[6], 0)
  publish(ARGV[7], '{"job_id":' .. cjson.encode(ARGV[8]) .. ',"reason":' .. cjson.encode(ARGV[1]) ..
    ',"generation":' .. string.format('%d', generation) .. ',"ts":' .. ARGV[9] .. ',"sig":' .. cjson.encode(ARGV[10]) ..
    '}')
  return {'running', state}
end
local queue = live[3] or ''
if KEYS[5] ~= queue then return {'queue', queue} end

-- The job's own result TTL when it set one, else the service's.
local ok, request = pcall(cjson.decode, live[4] or '')
local ttl = ok and type(request) == 'table' and type(request.options) == 'table' and request.options.result_ttl_s
if type(ttl) ~= 'number' or ttl < 1 then ttl = tonumber(ARGV[3]) end
ttl = string.format('%d', ttl)

-- A generator's stream from an earlier attempt ends as a cancelled run's would: its end marker
-- (service.redis.streams.StreamEnd: "end", "count", "error") after its items (entry 0-n is item n - 1).
local function end_stream(stream)
  local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #tail == 0 then return end
  local items = tonumber(string.match(tail[1][1], '^0%-(%d+)$') or '')
  if not items then return end
  redis.pcall('XADD', stream, '0-' .. string.format('%d', items + 1), 'end', 'cancelled', 'count',
    string.format('%d', items), 'error', ARGV[5])
  redis.call('EXPIRE', stream, ttl)
end

local h = redis.call('HGETALL', record)
local rec = {}
for j = 1, #h, 2 do rec[h[j]] = h[j + 1] end
local seq = to_int(rec.seq, 0) + 1
local progress = with_status(rec.progress, ARGV[13])
if progress then
  rec.progress = progress
  if live[2] then
    publish(ARGV[6], '{"type":"progress","job_id":' .. cjson.encode(ARGV[8]) .. ',"progress":' ..
      progress .. ',"seq":' .. seq .. '}')
  end
  seq = seq + 1
end
rec.state, rec.seq, rec.cancel_requested, rec.finished_at_ms, rec.error = 'cancelled', tostring(seq), ARGV[1], ARGV[2],
  ARGV[5]
rec.request = nil
-- A request that is not JSON (written by hand) goes in as a string, as the settle's would.
local body = ok and live[4] or cjson.encode(live[4] or '')
local now = string.format('%d', to_int(ARGV[2], 0))
redis.call('SET', KEYS[2], '{"t":' .. string.format('%d', to_int(rec.attempt, 0)) .. ',"f":' .. cjson.encode(ARGV[12]) ..
  ',"a":[],"et":' .. string.format('%d', to_int(rec.enqueued_at_ms, 0)) .. ',"s":false,"r":' .. ARGV[11] .. ',"st":' ..
  now .. ',"ft":' .. now .. ',"q":' .. cjson.encode(queue) .. ',"id":' .. cjson.encode(ARGV[4]) .. ',"k":{"request":' ..
  body .. '},"actionq":' .. cjson.encode(rec) .. '}', 'EX', ttl)
end_stream(KEYS[4])
redis.call('ZREM', queue, ARGV[4])
redis.call('DEL', record, KEYS[3])
publish_state(live[2], ARGV[6], ARGV[8], 'cancelled', to_int(live[5], 0), seq)
return {'cancelled', state}
