-- progress.lua: a running job's latest progress, published if someone follows the job.
--
-- KEYS[1]  record   <ns>:job:<id>   hash, the live JobRecord
-- ARGV[1]  the ProgressUpdate JSON
-- ARGV[2]  the job channel (<ns>:ch:job:<id>)
-- ARGV[3]  the job id
-- Reply: the record's new seq, or -1 when the job is not running (a late update never follows
--   the final state; nothing is written).
--
-- Message: {"type":"progress","job_id":"<id>","progress":<ProgressUpdate>,"seq":<n>}

local current = redis.call('HMGET', KEYS[1], 'state', 'watched')
if current[1] ~= 'running' then return -1 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
if current[2] then
  publish(ARGV[2],
    '{"type":"progress","job_id":' .. cjson.encode(ARGV[3]) .. ',"progress":' .. ARGV[1] .. ',"seq":' .. seq .. '}')
end
return seq
