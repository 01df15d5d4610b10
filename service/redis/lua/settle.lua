-- settle.lua: record how attempts ended (a batch of them): ended, retrying, or back in the queue.
--
-- KEYS[1]  the dead-letter index (<ns>:dead), zset: job id -> when it was dead-lettered
-- then seven per settlement s (s = 0, 1, ...: KEYS[1 + 7s + 1 .. 1 + 7s + 7]):
--   record       <ns>:job:<id>            hash, the live JobRecord
--   queue        the job's queue          zset
--   lease        arq:in-progress:<ns>:<id>
--   result       arq:result:<ns>:<id>     where an ended job's final record goes
--   checkpoint   <ns>:checkpoint:<id>     deleted when the job ends
--   dead letter  <ns>:dead:<id>           written when the settlement asks for one
--   stream       <ns>:stream:<id>         a generator's output: its end marker goes in with the final state
-- ARGV[s + 1]  settlement s, JSON:
--   {"job_id": "<id>", "arq_id": "<ns>:<id>", "channel": "<ns>:ch:job:<id>", "state": "<new state>",
--    "attempt": <n>, "fields": [<record field>, <value>, ...],
--    "score_ms": <back in the queue at this score> (absent: the job leaves its queue),
--    "result": "<arq's result JSON>", "result_ttl_ms": <ms> (both present: the job ended),
--    "owner": {"worker": "<id>", "attempt": <n>} (absent: settle whoever holds the record),
--    "unclaimed": true (a job that waited unserved: settled only while no attempt holds it, a
--      running record whose lease is gone being held by nobody),
--    "dead_letter": {"ttl_s": <s>, "at_ms": <ms>, "request": <false: the request is not readable>}
--      (absent: none),
--    "stream_end": {"id": "0-<n>", "fields": [<field>, <value>, ...], "ttl_s": <s>} (absent: no stream),
--    "progress_status": "<status>" (an ended job: its latest progress update takes this status),
--    "interrupted": {"note": "<why>", "at_ms": <ms>} (a requeued attempt that ran: its history entry
--      `attempt:<n>`, state 'interrupted', is written from the record's worker and started_at_ms)}
-- Reply: per settlement, the record's new seq, or
--   -1  the live record is gone, and there is no final record (deleted, or expired): nothing written, it
--       leaves its queue;
--   -2  the job had ended (cancelled meanwhile: its final record is in arq's result): nothing written, it
--       leaves its queue;
--   -3  another attempt holds the job (this one's lease lapsed and another worker took it):
--       nothing written, and its queue entry, lease and checkpoint are left to that attempt.
--
-- An ended job keeps one key: its final record goes into arq's result, under "actionq" (less its
-- request, which arq's kwargs hold; service.arqformat), and the record hash is deleted. Its dead
-- letter (request, queue, state, error, every attempt) is written from the same record, and a
-- generator's stream gets its end marker (service.redis.streams): a settlement that writes
-- nothing writes no letter and no marker either. The state message goes out only if
-- someone follows the job (the record's `watched`); an ended job's carries its final record as
-- "final" (the value arq's result holds) when that is at most INLINE_FINAL_BYTES.
--
-- An ended job's progress snapshot says how it ended: its latest update's top-level "status" becomes
-- `progress_status`; when that changes it, the change counts (seq + 1) and goes out first as a
-- progress message, then the state message (seq + 2). A job that ends while its record still
-- says another attempt runs (a job taken expired or malformed, or swept unserved: no owner) gets
-- that attempt's history entry, state 'lost', unless it has one.

local gone, dels = {}, {}
-- A final record up to this size goes out inside the terminal state message (larger: a follower reads it).
local INLINE_FINAL_BYTES = 65536

-- No live record: -2 if the job ended (its final record is in arq's result: a job cancelled while it
-- waited, say), else -1.
local function missing(k)
  return redis.call('EXISTS', KEYS[k + 4]) == 1 and -2 or -1
end

local function superseded(op, state, worker, attempt, k)
  if op.unclaimed then return state == 'running' and redis.call('EXISTS', KEYS[k + 3]) == 1 end
  return op.owner and (state ~= 'running' or worker ~= op.owner.worker or to_int(attempt, -1) ~= op.owner.attempt)
end

local function dead_letter(op, rec, request, k)
  local attempts = {}
  for name, value in pairs(rec) do
    local n = string.match(name, '^attempt:(%d+)$')
    if n then attempts[#attempts + 1] = {tonumber(n), value} end
  end
  table.sort(attempts, function(a, b) return a[1] < b[1] end)
  local history = {}
  for i, a in ipairs(attempts) do history[i] = a[2] end
  -- A request that could not be read (the job failed as malformed) is kept as null: the error says why.
  if not op.dead_letter.request or not request then request = 'null' end
  local letter = '{"job_id":' .. cjson.encode(op.job_id) .. ',"request":' .. request .. ',"queue":' ..
    cjson.encode(rec.queue or '') .. ',"state":"' .. op.state .. '","error":' .. (rec.error or 'null') ..
    ',"attempts":[' .. table.concat(history, ',') .. '],"dead_at_ms":' .. op.dead_letter.at_ms .. '}'
  redis.call('SET', KEYS[k + 6], letter, 'EX', op.dead_letter.ttl_s)
  redis.call('ZADD', KEYS[1], op.dead_letter.at_ms, op.job_id)
  redis.call('EXPIRE', KEYS[1], op.dead_letter.ttl_s)
end

local function ended(op, k)
  local h = redis.call('HGETALL', KEYS[k + 1])
  if #h == 0 then return missing(k), nil end
  local rec = {}
  for j = 1, #h, 2 do rec[h[j]] = h[j + 1] end
  if TERMINAL[rec.state] then return -2, nil end
  if superseded(op, rec.state, rec.worker, rec.attempt, k) then return -3, nil end
  local seq, request = to_int(rec.seq, 0) + 1, rec.request
  local n = to_int(rec.attempt, 0)
  if rec.state == 'running' and not op.owner and n > 0 and not rec['attempt:' .. n] then
    rec['attempt:' .. n] = attempt_entry(n, rec.worker, rec.started_at_ms, 'lost',
      'its worker stopped answering (lease lapsed)', nil)
  end
  local progress = with_status(rec.progress, op.progress_status)
  if progress then  -- one change more, published before the final state
    rec.progress = progress
    if rec.watched then
      publish(op.channel, '{"type":"progress","job_id":' .. cjson.encode(op.job_id) .. ',"progress":' ..
        progress .. ',"seq":' .. seq .. '}')
    end
    seq = seq + 1
  end
  rec.state, rec.seq, rec.request = op.state, tostring(seq), nil
  for j = 1, #op.fields, 2 do rec[op.fields[j]] = op.fields[j + 1] end
  local final = string.sub(op.result, 1, -2) .. ',"actionq":' .. cjson.encode(rec) .. '}'
  redis.call('SET', KEYS[k + 4], final, 'PX', op.result_ttl_ms)
  if op.dead_letter then dead_letter(op, rec, request, k) end
  if op.stream_end then
    -- pcall: a marker id below the stream's top (a superseded attempt's items) must not fail the batch
    redis.pcall('XADD', KEYS[k + 7], op.stream_end.id, unpack(op.stream_end.fields))
    redis.call('EXPIRE', KEYS[k + 7], op.stream_end.ttl_s)
  end
  dels[#dels + 1] = KEYS[k + 1]
  return seq, rec.watched, final
end

local function stepped(op, k)
  local r = redis.call('HMGET', KEYS[k + 1], 'state', 'seq', 'watched', 'worker', 'attempt', 'started_at_ms')
  if not r[1] then return missing(k), nil end
  if TERMINAL[r[1]] then return -2, nil end
  if superseded(op, r[1], r[4], r[5], k) then return -3, nil end
  local seq = to_int(r[2], 0) + 1
  local n = to_int(r[5], 0)
  if op.interrupted and r[1] == 'running' and n > 0 then
    redis.call('HSET', KEYS[k + 1], 'attempt:' .. n,
      attempt_entry(n, r[4], r[6], 'interrupted', op.interrupted.note, op.interrupted.at_ms))
  end
  redis.call('HSET', KEYS[k + 1], 'state', op.state, 'seq', seq, unpack(op.fields))
  return seq, r[3]
end

local seqs = {}
for i = 1, #ARGV do
  local op, k = cjson.decode(ARGV[i]), 1 + (i - 1) * 7
  local seq, watched, final
  if op.result then seq, watched, final = ended(op, k) else seq, watched = stepped(op, k) end
  if watched and final and #final <= INLINE_FINAL_BYTES then
    -- The end, with the final record: a follower has the outcome without reading it back.
    publish(op.channel,
      string.sub(state_message(op.job_id, op.state, op.attempt, seq), 1, -2) .. ',"final":' .. final .. '}')
  else
    publish_state(watched, op.channel, op.job_id, op.state, op.attempt, seq)
  end
  seqs[i] = seq
  if seq ~= -3 then
    local queue = KEYS[k + 2]
    if op.score_ms and seq > 0 then
      redis.call('ZADD', queue, op.score_ms, op.arq_id)
    else
      gone[queue] = gone[queue] or {}
      table.insert(gone[queue], op.arq_id)
    end
    dels[#dels + 1] = KEYS[k + 3]
    if op.result then dels[#dels + 1] = KEYS[k + 5] end  -- an ended job has nothing to resume
  end
end
for queue, ids in pairs(gone) do redis.call('ZREM', queue, unpack(ids)) end
if #dels > 0 then redis.call('DEL', unpack(dels)) end
return seqs
