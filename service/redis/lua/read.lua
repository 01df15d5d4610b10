-- read.lua: a job's record, live or final; optionally marking the job as followed.
--
-- KEYS[1]  record   <ns>:job:<id>          hash, the live JobRecord
-- KEYS[2]  result   arq:result:<ns>:<id>   string, the final record of an ended job (service.arqformat)
-- ARGV[1]  '1': mark the job as followed (its record's `watched`), '0': only read
-- Reply: {record fields (flat), false} for a live job; {{}, final record} for an ended one;
--   {{}, false} when there is neither (never submitted, or expired).
--
-- A follower subscribes to the job's channel first, then reads here with ARGV[1] '1': from then
-- on every change of the job is published on its channel, so nothing between the read and the
-- messages is missed. An ended job publishes nothing more; its final record is the answer.

local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then
  if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'watched', '1') end
  return {fields, false}
end
return {fields, redis.call('GET', KEYS[2])}
