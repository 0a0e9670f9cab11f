#!lua name=gateway_v1
--
-- Server-side half of the push gateway. Publishing is one atomic function call, so history and
-- live push can never disagree, and any language that can talk to Redis can publish:
--
--   FCALL gw_publish 2 <prefix>{<channel>}:stream <prefix>{<channel>}:meta <data> [event] [kind] [maxlen] [ttl_ms]
--
-- returns "<epoch>:<offset>", the event's position. `kind` is text (default), json or binary;
-- `event` is an optional SSE event name ("" for none). `maxlen` and `ttl_ms` default to the
-- values of the gateway instance that loaded this library.
--
-- Per channel (the {hash tag} keeps all three in one Cluster slot):
--   <prefix>{<channel>}:meta    hash: epoch (hex, new whenever history is recreated), offset
--   <prefix>{<channel>}:stream  stream: entry id "<offset>-0", fields d (data), t (ms), e, k
--   <prefix>{<channel>}:live    pub/sub channel: "<epoch> <offset> <ms> <kind> <event>\n<data>"

local DEFAULT_MAXLEN = __MAXLEN__
local DEFAULT_TTL_MS = __TTL_MS__

local function fail(message)
  return redis.error_reply('ERR gateway: ' .. message)
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

-- The channel's epoch, created with offset 0 when the channel has no history. A stream left
-- without its meta hash belongs to a forgotten epoch and is dropped.
local function ensure_epoch(stream_key, meta_key, ttl_ms)
  local epoch = redis.call('HGET', meta_key, 'epoch')
  if epoch then
    return epoch
  end
  local t = redis.call('TIME')
  local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
  epoch = string.format('%x', micros % 4294967296)
  redis.call('DEL', stream_key)
  redis.call('HSET', meta_key, 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', meta_key, ttl_ms)
  return epoch
end

local function publish(keys, args)
  local stream_key, meta_key = keys[1], keys[2]
  local live = stream_key and live_channel(stream_key)
  if not live or not meta_key or string.sub(meta_key, -5) ~= ':meta' then
    return fail('keys must be <prefix>{<channel>}:stream and <prefix>{<channel>}:meta')
  end
  local data = args[1]
  if data == nil then
    return fail('missing data argument')
  end
  local name = args[2] or ''
  if #name > 64 or string.find(name, '[^%w_%.:%-]') then
    return fail('event name must be up to 64 of A-Z a-z 0-9 _ - . :')
  end
  if name == 'gap' or name == 'binary' or string.sub(name, 1, 7) == 'binary:' then
    return fail('event names "gap", "binary" and "binary:..." are reserved')
  end
  local kind = args[3] or ''
  if kind == '' then
    kind = 'text'
  end
  if kind ~= 'text' and kind ~= 'json' and kind ~= 'binary' then
    return fail('kind must be text, json or binary')
  end
  local maxlen = positive(args[4], DEFAULT_MAXLEN)
  local ttl_ms = positive(args[5], DEFAULT_TTL_MS)
  if not maxlen or not ttl_ms then
    return fail('maxlen and ttl_ms must be positive integers')
  end

  local epoch = ensure_epoch(stream_key, meta_key, ttl_ms)
  local offset = string.format('%d', redis.call('HINCRBY', meta_key, 'offset', 1))
  local t = redis.call('TIME')
  local ms = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
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
  redis.call('PEXPIRE', stream_key, ttl_ms)
  redis.call('PEXPIRE', meta_key, ttl_ms)
  redis.call('PUBLISH', live, epoch .. ' ' .. offset .. ' ' .. ms .. ' ' .. kind .. ' ' .. name .. '\n' .. data)
  return epoch .. ':' .. offset
end

-- FCALL gw_read 2 <stream> <meta> <after> <count> [ttl_ms]
-- returns { epoch, top, entries } where entries are XRANGE entries with offset > after.
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
  local epoch = ensure_epoch(stream_key, meta_key, ttl_ms)
  local top = redis.call('HGET', meta_key, 'offset') or '0'
  local entries = {}
  if count > 0 and tonumber(after) < tonumber(top) then
    entries = redis.call('XRANGE', stream_key, '(' .. after .. '-0', '+', 'COUNT', count)
  end
  return { epoch, top, entries }
end

redis.register_function('gw_publish', publish)
redis.register_function('gw_read', read)
