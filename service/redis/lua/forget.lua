-- forget.lua: remove a dead letter if it is still the one its caller read (a replay's last step).
--
-- KEYS[1]  the letter   <ns>:dead:<id>   string, the DeadLetter JSON
-- KEYS[2]  its index    <ns>:dead        zset (on Redis Cluster, the job's partition's)
-- ARGV[1]  the letter's JSON as the caller read it
-- ARGV[2]  the job id (its member in the index)
-- Reply: 1 removed; 0 left as it is (gone, or replaced: the replayed job failed again already and
-- wrote a new letter, which must stay).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
