-- Argo CD health of the lbctl DaemonSet: the rollout (as Argo CD's own DaemonSet check), then
-- each node's `lbctl watch` /status as its "status" container publishes it in the annotation
-- status.lbctl.dev/NODE = "ready=..;valid=..;result=..;digest=..;error=.." (reconciler/k8s/health.py):
--   Degraded     a node rejected the configuration (valid=false: it keeps the last good one) or
--                failed to apply it (result=failed)
--   Progressing  the rollout is not done, a node has not reported or is not ready yet, or the
--                nodes run different configurations (digests differ)
--   Healthy      every scheduled node runs one verified configuration
local hs = {}
local function done(status, message)
  hs.status = status
  hs.message = message
  return hs
end

if obj.status == nil then
  return done("Progressing", "Waiting for the DaemonSet's status")
end
local st = obj.status
local generation = obj.metadata.generation or 0
if (st.observedGeneration or 0) < generation then
  return done("Progressing", "Waiting for rollout: the controller has not seen the latest spec yet")
end
local desired = st.desiredNumberScheduled or 0
if (st.updatedNumberScheduled or 0) < desired then
  return done("Progressing", string.format("Waiting for rollout: %d of %d pods updated",
    st.updatedNumberScheduled or 0, desired))
end
if (st.numberAvailable or 0) < desired then
  return done("Progressing", string.format("Waiting for rollout: %d of %d pods available",
    st.numberAvailable or 0, desired))
end

-- Other DaemonSets (no lbctl marker annotation): healthy once rolled out, as Argo CD's own check.
local annotations = obj.metadata.annotations or {}
if annotations["lbctl.dev/status-annotations"] == nil then
  return done("Healthy", "")
end

local nodes = {}
for key, _ in pairs(annotations) do
  local node = string.match(key, "^status%.lbctl%.dev/(.+)$")
  if node ~= nil then
    table.insert(nodes, node)
  end
end
table.sort(nodes)

local degraded, pending, digests, ndigests, digest = {}, {}, {}, 0, ""
for _, node in ipairs(nodes) do
  local value = annotations["status.lbctl.dev/" .. node]
  local f = {}
  for k, v in string.gmatch(value .. ";", "(%w+)=([^;]*);") do
    f[k] = v
  end
  local why = f.error or ""
  if f.valid == "false" then
    table.insert(degraded, node .. ": configuration rejected: " .. why)
  elseif f.result == "failed" then
    table.insert(degraded, node .. ": apply failed: " .. why)
  elseif f.ready ~= "true" then
    if why == "" then why = "no verified reconcile yet" end
    table.insert(pending, node .. ": " .. why)
  end
  if f.digest ~= nil and f.digest ~= "" and digests[f.digest] == nil then
    digests[f.digest] = true
    ndigests = ndigests + 1
    digest = f.digest
  end
end

if #degraded > 0 then
  return done("Degraded", table.concat(degraded, "; "))
end
if #nodes < desired then
  return done("Progressing", string.format("%d of %d nodes reported their lbctl status", #nodes, desired))
end
if #pending > 0 then
  return done("Progressing", table.concat(pending, "; "))
end
if ndigests > 1 then
  return done("Progressing", "nodes run different configurations")
end
return done("Healthy", string.format("%d nodes run configuration %s", #nodes, string.sub(digest, 1, 12)))
