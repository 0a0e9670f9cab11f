#!lua name=gateway_v1
--
-- Server-side half of the push gateway. Publishing is one atomic function call, so history and
-- live push can never disagree, and any language that can talk to Redis can publish:
--
--   FCALL gw_publish 2 <prefix>{<channel>}:stream <prefix>{<channel>}:meta <data> [event] [kind] [maxlen] [ttl_ms]
--
-- returns "<epoch>:<offset>", the event's position. `kind` is text (default), json or binary;
-- `event` is an optional SSE event name ("" for none). `maxlen` and `ttl_ms` default to the
-- values of the gateway instance that loaded this library. Many events in one atomic call:
--
--   FCALL gw_publish_many <2n> <stream 1> <meta 1> ... <stream n> <meta n> <maxlen> <ttl_ms> <channel#> <data> <event> <kind> [...]
--
-- (see publish_many below).
--
-- Per channel (the {hash tag} keeps all three in one Cluster slot):
--   <prefix>{<channel>}:meta    hash: epoch (hex), offset, writer, lineage (see below)
--   <prefix>{<channel>}:stream  stream: entry id "<offset>-0", fields d (data), t (ms), e, k
--   <prefix>{<channel>}:live    pub/sub channel: "<epoch> <offset> <ms> <kind> <event>\n<data>"
--
-- Epochs and lost writes. Offsets must never be handed out twice under one epoch, yet Redis can
-- lose acknowledged writes: a restart from a snapshot or an `everysec` AOF, or a failover to a
-- replica that lagged, brings back an older `offset` while clients have already seen newer ones.
-- So every meta hash records which server wrote it last (`writer`: the server's run_id, which
-- changes with every process, so neither a restored snapshot nor a promoted replica carries the
-- right one; in a cluster, "<node id>/<run_id>"). The first command on a channel whose writer is
-- another server decides, before anything else happens:
--   - nothing can have been lost when the operator declared Redis durable (DURABLE, from
--     `redis.durable`), or, in a cluster, when the writer is another primary that is alive and
--     connected (the keys came by slot migration, which copies the primary's own data): the
--     channel is adopted as it is;
--   - otherwise the channel moves to a new epoch. It inherits the offsets the store still
--     holds: `lineage` lists "<epoch>:<cap>", newest first (at most 8), meaning "offsets up to
--     cap of that epoch are also offsets of this one", and offsets continue from the inherited
--     head. Continuity across the move cannot be proven, so whoever crosses it gets a gap, and
--     nothing is delivered twice.
-- gw_fence makes the same move when a gateway sees a position beyond the head of the current
-- epoch: writes were lost without any change of server.
local DEFAULT_MAXLEN = __MAXLEN__
local DEFAULT_TTL_MS = __TTL_MS__
local DURABLE = __DURABLE__
-- Event names only the gateway sends (shared::RESERVED_EVENT_NAMES), and the prefix of the
-- names SSE gives binary payloads (shared::BINARY_EVENT_PREFIX).
local RESERVED = __RESERVED__
local BINARY_PREFIX = '__BINARY_PREFIX__'

local CLUSTER = __CLUSTER__

local function fail(message)
  return redis.error_reply('GATEWAY ' .. message)
end

-- The live pub/sub channel that belongs to a stream key.
local function live_channel(stream_key)
  if string.sub(stream_key, -7) ~= ':stream' then
    return nil
  end
  return string.sub(stream_key, 1, -8) .. ':live'
end

local function positive(value, default)
  if value == nil or value == '' then
    return default
  end
  local n = tonumber(value)
  if n == nil or n < 1 or n ~= math.floor(n) then
    return nil
  end
  return n
end

-- This server's writer token; see the header. Looked up once per Lua state (a reload looks up
-- the same value again).
local server = {}
local function writer_token()
  if not server.token then
    local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?'
    if CLUSTER then
      server.node = redis.call('CLUSTER', 'MYID')
      server.token = server.node .. '/' .. run_id
    else
      server.token = run_id
    end
  end
  return server.token
end

-- Whether a channel last written by `writer` can be taken over without a possible loss.
local function handed_over(writer)
  if DURABLE then
    return true
  end
  if not CLUSTER or not writer then
    return false
  end
  local node = string.match(writer, '^(%x+)/')
  if not node or node == server.node then
    return false -- this node restarted
  end
  for line in string.gmatch(redis.call('CLUSTER', 'NODES'), '[^\n]+') do
    local id, flags, link = string.match(line, '^(%x+) %S+ (%S+) %S+ %S+ %S+ %S+ (%S+)')
    if id == node then
      return string.find(flags, 'master', 1, true) ~= nil
        and string.find(flags, 'fail', 1, true) == nil
        and link == 'connected'
    end
  end
  return false
end

local function fresh_epoch(old)
  local t = redis.call('TIME')
  local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local epoch = string.format('%x', micros % 4294967296)
  if epoch == old then
    epoch = string.format('%x', (micros + 1) % 4294967296)
  end
  return epoch
end

-- Moves the channel to a new epoch that inherits offsets up to `top` of `epoch`; older
-- ancestors keep the smaller cap.
local function move_epoch(meta_key, epoch, top, lineage)
  local entries = { epoch .. ':' .. top }
  for old_epoch, cap in string.gmatch(lineage or '', '(%x+):(%d+)') do
    if #entries >= 8 then
      break
    end
    if tonumber(cap) > tonumber(top) then
      cap = top
    end
    entries[#entries + 1] = old_epoch .. ':' .. cap
  end
  local next_epoch = fresh_epoch(epoch)
  lineage = table.concat(entries, ' ')
  redis.call('HSET', meta_key, 'epoch', next_epoch, 'lineage', lineage, 'writer', writer_token())
  return next_epoch, lineage
end

-- The channel's head as { epoch, offset, lineage }: created at offset 0 when the channel has no
-- history (a stream left without its meta hash belongs to a forgotten epoch and is dropped), and
-- taken over or moved to a new epoch when another server wrote it last (see the header).
local function head(stream_key, meta_key, ttl_ms)
  local meta = redis.call('HMGET', meta_key, 'epoch', 'offset', 'writer', 'lineage')
  local epoch, top, writer, lineage = meta[1], meta[2] or '0', meta[3], meta[4] or ''
  if not epoch then
    epoch = fresh_epoch(nil)
    redis.call('DEL', stream_key)
    redis.call('HSET', meta_key, 'epoch', epoch, 'offset', 0, 'writer', writer_token(), 'lineage', '')
    redis.call('PEXPIRE', meta_key, ttl_ms)
    return epoch, '0', ''
  end
  if writer ~= writer_token() then
    if handed_over(writer) then
      redis.call('HSET', meta_key, 'writer', writer_token())
    else
      epoch, lineage = move_epoch(meta_key, epoch, top, lineage)
    end
  end
  return epoch, top, lineage
end

-- The live channel of a valid <stream>, <meta> key pair of one channel, or nil.
local function channel_keys(stream_key, meta_key)
  local live = stream_key and live_channel(stream_key)
  if not live or not meta_key or string.sub(meta_key, -5) ~= ':meta'
    or string.sub(meta_key, 1, -6) ~= string.sub(stream_key, 1, -8) then
    return nil
  end
  return live
end
local BAD_KEYS = 'keys must be <prefix>{<channel>}:stream and <prefix>{<channel>}:meta'

-- An event's kind ('' means text), or nil and why its name or kind is refused.
local function checked_kind(name, kind)
  if #name > 64 or string.find(name, '[^%w_%.:%-]') then
    return nil, 'event name must be up to 64 of A-Z a-z 0-9 _ - . :'
  end
  if RESERVED[name] or string.sub(name, 1, #BINARY_PREFIX) == BINARY_PREFIX then
    return nil, 'event name ' .. name .. ' is reserved for the gateway'
  end
  if kind == '' then
    kind = 'text'
  end
  if kind ~= 'text' and kind ~= 'json' and kind ~= 'binary' then
    return nil, 'kind must be text, json or binary'
  end
  return kind
end

-- Now, in Unix milliseconds, as a decimal string.
local function now_ms()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end

-- Appends one checked event to a channel whose head() was taken, and pushes it live; returns
-- its offset. The caller refreshes the keys' expiry.
local function append(stream_key, meta_key, live, epoch, ms, maxlen, data, name, kind)
  local offset = string.format('%d', redis.call('HINCRBY', meta_key, 'offset', 1))
  local fields = { 'd', data, 't', ms }
  if name ~= '' then
    fields[#fields + 1] = 'e'
    fields[#fields + 1] = name
  end
  if kind ~= 'text' then
    fields[#fields + 1] = 'k'
    fields[#fields + 1] = kind
  end
  redis.call('XADD', stream_key, 'MAXLEN', '~', string.format('%d', maxlen), offset .. '-0', unpack(fields))
  redis.call(CLUSTER and 'SPUBLISH' or 'PUBLISH', live, epoch .. ' ' .. offset .. ' ' .. ms .. ' ' .. kind .. ' ' .. name .. '\n' .. data)
  return offset
end

local function publish(keys, args)
  local stream_key, meta_key = keys[1], keys[2]
  local live = channel_keys(stream_key, meta_key)
  if not live then
    return fail(BAD_KEYS)
  end
  local data = args[1]
  if data == nil then
    return fail('missing data argument')
  end
  local name = args[2] or ''
  local kind, why = checked_kind(name, args[3] or '')
  if not kind then
    return fail(why)
  end
  local maxlen = positive(args[4], DEFAULT_MAXLEN)
  local ttl_ms = positive(args[5], DEFAULT_TTL_MS)
  if not maxlen or not ttl_ms then
    return fail('maxlen and ttl_ms must be positive integers')
  end

  local epoch = head(stream_key, meta_key, ttl_ms)
  local offset = append(stream_key, meta_key, live, epoch, now_ms(), maxlen, data, name, kind)
  redis.call('PEXPIRE', stream_key, ttl_ms)
  redis.call('PEXPIRE', meta_key, ttl_ms)
  return epoch .. ':' .. offset
end

-- FCALL gw_publish_many <2n> <stream 1> <meta 1> ... <stream n> <meta n> <maxlen> <ttl_ms>
--   <channel#> <data> <event> <kind> [<channel#> <data> <event> <kind> ...]
-- Many events, to one or more channels, in one atomic call: each event names its channel by
-- the number of its key pair (1 to n) and is stored and pushed exactly as gw_publish would,
-- in argument order. Every argument is checked before anything is written, so a refused call
-- stored nothing. `maxlen` and `ttl_ms` may be "" for the defaults. Returns the positions,
-- in order. On Redis Cluster every key of a call must be in one slot (one channel per call,
-- or channels whose names hash to the same slot).
local function publish_many(keys, args)
  if #keys == 0 or #keys % 2 ~= 0 then
    return fail('keys must be pairs of <prefix>{<channel>}:stream <prefix>{<channel>}:meta')
  end
  local channels = {}
  for i = 1, #keys, 2 do
    local live = channel_keys(keys[i], keys[i + 1])
    if not live then
      return fail(BAD_KEYS)
    end
    channels[#channels + 1] = { stream = keys[i], meta = keys[i + 1], live = live }
  end
  local maxlen = positive(args[1], DEFAULT_MAXLEN)
  local ttl_ms = positive(args[2], DEFAULT_TTL_MS)
  if not maxlen or not ttl_ms then
    return fail('maxlen and ttl_ms must be positive integers')
  end
  local events = {}
  if #args < 6 or (#args - 2) % 4 ~= 0 then
    return fail('each event takes 4 arguments: <channel#> <data> <event> <kind>')
  end
  for i = 3, #args, 4 do
    local n = #events + 1
    local c = tonumber(args[i])
    if c == nil or c ~= math.floor(c) or not channels[c] then
      return fail('event ' .. n .. ': channel# must be 1 to ' .. #channels)
    end
    local name = args[i + 2]
    local kind, why = checked_kind(name, args[i + 3])
    if not kind then
      return fail('event ' .. n .. ': ' .. why)
    end
    events[n] = { channel = channels[c], data = args[i + 1], name = name, kind = kind }
  end

  local ms = now_ms()
  local ids = {}
  for n, e in ipairs(events) do
    local ch = e.channel
    if not ch.epoch then
      ch.epoch = head(ch.stream, ch.meta, ttl_ms)
    end
    local offset = append(ch.stream, ch.meta, ch.live, ch.epoch, ms, maxlen, e.data, e.name, e.kind)
    ids[n] = ch.epoch .. ':' .. offset
  end
  for _, ch in ipairs(channels) do
    if ch.epoch then
      redis.call('PEXPIRE', ch.stream, ttl_ms)
      redis.call('PEXPIRE', ch.meta, ttl_ms)
    end
  end
  return ids
end

-- FCALL gw_read 2 <stream> <meta> <after> <count> [ttl_ms]
-- returns { epoch, top, entries, lineage } where entries are XRANGE entries with offset > after.
local function read(keys, args)
  local stream_key, meta_key = keys[1], keys[2]
  if not stream_key or not meta_key then
    return fail('keys must be <prefix>{<channel>}:stream and <prefix>{<channel>}:meta')
  end
  local after = args[1] or '0'
  if not string.match(after, '^%d+$') or #after > 20 then
    return fail('after must be a decimal offset')
  end
  local count = tonumber(args[2] or '0')
  if count == nil or count < 0 then
    return fail('count must be a non-negative integer')
  end
  local ttl_ms = positive(args[3], DEFAULT_TTL_MS)
  if not ttl_ms then
    return fail('ttl_ms must be a positive integer')
  end
  local epoch, top, lineage = head(stream_key, meta_key, ttl_ms)
  local entries = {}
  if count > 0 and tonumber(after) < tonumber(top) then
    entries = redis.call('XRANGE', stream_key, '(' .. after .. '-0', '+', 'COUNT', count)
  end
  return { epoch, top, entries, lineage }
end

-- FCALL gw_fence 2 <stream> <meta> <epoch> <offset> [ttl_ms]
-- Someone saw <epoch>:<offset>, beyond the head of the current epoch: the store lost writes
-- without a change of server. Moves to a new epoch (unless the epoch already moved), so the
-- offsets after the head are never handed out again under the old name. Returns the epoch.
local function fence(keys, args)
  local stream_key, meta_key = keys[1], keys[2]
  if not stream_key or not meta_key then
    return fail('keys must be <prefix>{<channel>}:stream and <prefix>{<channel>}:meta')
  end
  local seen_epoch, seen = args[1] or '', args[2] or ''
  if not string.match(seen_epoch, '^%x+$') or #seen_epoch > 16
    or not string.match(seen, '^%d+$') or #seen > 20 then
    return fail('fence needs <epoch-hex> <offset>')
  end
  local ttl_ms = positive(args[3], DEFAULT_TTL_MS)
  if not ttl_ms then
    return fail('ttl_ms must be a positive integer')
  end
  local epoch, top, lineage = head(stream_key, meta_key, ttl_ms)
  if epoch == seen_epoch and tonumber(seen) > tonumber(top) then
    epoch = move_epoch(meta_key, epoch, top, lineage)
  end
  return epoch
end

-- Presence: who is subscribed to a channel, on every instance.
--   <prefix>{<channel>}:presence      hash: connection id -> JSON {"conn","sub","info"}
--   <prefix>{<channel>}:presence:exp  sorted set: connection id -> deadline (Unix ms)
-- FCALL gw_presence 4 <hash> <zset> <stream> <meta> <ttl_ms> <events> <maxlen> <history_ttl_ms> [op conn value]...
-- "a" adds or refreshes an entry (deadline now + ttl_ms), "r" removes it (its value is ignored);
-- the gateway sends each connection at most once per call. Then entries whose deadline has passed (an instance
-- that died without cleaning up) are removed, at most PRESENCE_EXPIRE per call. Both keys then
-- live 2 * ttl_ms, so a channel whose instances all died vanishes by itself.
-- With <events> "1" every entry that appears (an add of an absent entry) or disappears (a
-- removal or an expiry of a present one) is also published on the channel, in that order, as
-- a json event presence.join / presence.leave whose data is the entry, exactly as
-- gw_publish_many would (<maxlen> and <history_ttl_ms> may be "" for the defaults): the event
-- and the change are one atomic step, so however many instances expire the same entries, and
-- whichever of them crashes, each appearance and disappearance is published exactly once (and
-- a write lost by a failover takes its event with it). A refresh of a present entry, even one
-- past its deadline, publishes nothing. With <events> "1" each op is applied on its own; with
-- "0" the stream and meta keys are not touched, and adds and removals go out as one HSET +
-- ZADD, one HDEL + ZREM per 1000 entries.
-- Returns { joins, leaves, expired }: the events published and the entries expired.
local PRESENCE_EXPIRE = 1000
local function presence(keys, args)
  local hash, zset = keys[1], keys[2]
  local ttl = tonumber(args[1])
  if ttl == nil or ttl <= 0 then
    return fail('ttl_ms must be a positive number')
  end
  local announce = args[2] == '1'
  local ch = nil
  if announce then
    local live = channel_keys(keys[3], keys[4])
    if not live then
      return fail(BAD_KEYS)
    end
    local maxlen = positive(args[3], DEFAULT_MAXLEN)
    local history_ttl = positive(args[4], DEFAULT_TTL_MS)
    if not maxlen or not history_ttl then
      return fail('maxlen and history_ttl_ms must be positive integers')
    end
    ch = { stream = keys[3], meta = keys[4], live = live, maxlen = maxlen, ttl = history_ttl }
  end
  local now = now_ms()
  local deadline = tonumber(now) + ttl
  local joins, leaves = 0, 0
  local function announced(name, value)
    if not ch.epoch then
      ch.epoch = head(ch.stream, ch.meta, ch.ttl)
    end
    append(ch.stream, ch.meta, ch.live, ch.epoch, now, ch.maxlen, value, name, 'json')
  end
  local fields, scores, gone = {}, {}, {}
  local function flush()
    if #fields > 0 then
      redis.call('HSET', hash, unpack(fields))
      redis.call('ZADD', zset, unpack(scores))
      fields, scores = {}, {}
    end
    if #gone > 0 then
      redis.call('HDEL', hash, unpack(gone))
      redis.call('ZREM', zset, unpack(gone))
      gone = {}
    end
  end
  for i = 5, #args - 2, 3 do
    local conn, value = args[i + 1], args[i + 2]
    if announce then
      -- One entry at a time, so each change is seen (and announced) exactly once.
      if args[i] == 'a' then
        redis.call('ZADD', zset, deadline, conn)
        if redis.call('HSET', hash, conn, value) == 1 then
          announced('presence.join', value)
          joins = joins + 1
        end
      else
        local old = redis.call('HGET', hash, conn)
        if old then
          redis.call('HDEL', hash, conn)
          announced('presence.leave', old)
          leaves = leaves + 1
        end
        redis.call('ZREM', zset, conn)
      end
    elseif args[i] == 'a' then
      fields[#fields + 1] = conn
      fields[#fields + 1] = value
      scores[#scores + 1] = deadline
      scores[#scores + 1] = conn
    else
      gone[#gone + 1] = conn
    end
    if #fields >= 2000 or #gone >= 1000 then
      flush()
    end
  end
  flush()
  local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, PRESENCE_EXPIRE)
  if #expired > 0 then
    if announce then
      local values = redis.call('HMGET', hash, unpack(expired))
      for k = 1, #expired do
        if values[k] then
          announced('presence.leave', values[k])
          leaves = leaves + 1
        end
      end
    end
    redis.call('HDEL', hash, unpack(expired))
    redis.call('ZREM', zset, unpack(expired))
  end
  if redis.call('EXISTS', hash) == 1 then
    redis.call('PEXPIRE', hash, ttl * 2)
    redis.call('PEXPIRE', zset, ttl * 2)
  end
  if ch and ch.epoch then
    redis.call('PEXPIRE', ch.stream, ch.ttl)
    redis.call('PEXPIRE', ch.meta, ch.ttl)
  end
  return { joins, leaves, #expired }
end

-- FCALL gw_presence_read 2 <hash> <zset> <max>
-- returns { count, value... } with every live entry's value when count <= max, else { count }
-- alone. Only entries whose deadline is still ahead count; expired ones are left for the next
-- gw_presence call to remove (and announce), so a read writes nothing and can be retried.
local function presence_read(keys, args)
  local max = tonumber(args[1]) or 0
  local live = '(' .. now_ms()
  local count = redis.call('ZCOUNT', keys[2], live, '+inf')
  if count > max or count == 0 then
    return { count }
  end
  local conns = redis.call('ZRANGEBYSCORE', keys[2], live, '+inf')
  local reply = { 0 }
  -- HMGET per 1000 fields: Lua's unpack() is limited to a few thousand values.
  for first = 1, #conns, 1000 do
    local values = redis.call('HMGET', keys[1], unpack(conns, first, math.min(first + 999, #conns)))
    for k = 1, #values do
      if values[k] then
        reply[#reply + 1] = values[k]
      end
    end
  end
  reply[1] = #reply - 1
  return reply
end

redis.register_function('gw_publish', publish)
redis.register_function('gw_publish_many', publish_many)
redis.register_function('gw_read', read)
redis.register_function('gw_fence', fence)
redis.register_function('gw_presence', presence)
redis.register_function('gw_presence_read', presence_read)
