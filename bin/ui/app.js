// The durastate ui page: lists executions, shows one as a tree of steps, refreshes while
// open. Everything from the store is put on the page as text (textContent), never as HTML.
'use strict'

const $ = (id) => document.getElementById(id)
const state = { info: null, search: '', selected: null, shownList: '', shownDetail: '', busy: false }

/** An element with attributes and children (strings become text nodes). */
function el(tag, attributes, ...children) {
  const node = document.createElement(tag)
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (name === 'className') node.className = value
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value)
    else node.setAttribute(name, value)
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child)
  return node
}

const DURATIONS = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['min', 60_000],
  ['s', 1_000],
]

function formatTtl(ms) {
  if (ms === null || ms === undefined) return 'no expiry'
  for (const [unit, size] of DURATIONS) if (ms >= size) return `${(ms / size).toFixed(1)} ${unit}`
  return `${ms} ms`
}

function formatSize(bytes) {
  if (bytes === null || bytes === undefined) return ''
  if (bytes < 1024) return `${bytes} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`
}

async function api(path, options = {}) {
  const headers = { accept: 'application/json' }
  if (options.method === 'POST') {
    headers['content-type'] = 'application/json'
    if (state.info?.token) headers['x-durastate-token'] = state.info.token
  }
  const response = await fetch(path, { ...options, headers })
  const body = await response.json().catch(() => ({}))
  if (!response.ok) {
    const error = new Error(body.error?.message ?? `HTTP ${response.status}`)
    error.status = response.status
    error.code = body.error?.code
    throw error
  }
  return body
}

function setStatus(text) {
  $('status').textContent = text
}

// ---------------------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------------------

function stateCell(execution) {
  return execution.inProgress ? el('span', { className: 'state-busy' }, 'in progress') : el('span', { className: 'state-done' }, 'finished')
}

function renderList(answer) {
  const text = JSON.stringify(answer) + state.selected
  if (text === state.shownList) return
  state.shownList = text
  const body = $('executions').tBodies[0]
  body.replaceChildren(
    ...answer.executions.map((execution) => {
      const steps = `${execution.stepsDone} done` + (execution.stepsInProgress ? `, ${execution.stepsInProgress} in progress` : '')
      const expires = execution.inProgress
        ? formatTtl(execution.expiresIn)
        : execution.stepsExpireIn !== null
          ? `steps: ${formatTtl(execution.stepsExpireIn)}`
          : 'no expiry'
      const row = el(
        'tr',
        { 'data-id': execution.id, onclick: () => select(execution.id) },
        el('td', null, execution.id),
        el('td', null, stateCell(execution)),
        el('td', null, steps),
        el('td', null, expires),
      )
      if (execution.id === state.selected) row.classList.add('selected')
      return row
    }),
  )
  const shown = answer.executions.length
  const more = answer.readLimited
    ? `; stopped after reading ${answer.read} of ${answer.keys}${answer.complete ? '' : '+'} keys, most of them no execution (KV entries?): search to narrow`
    : answer.truncated
      ? ` shown; more may exist (${answer.keys}${answer.complete ? '' : '+'} keys under the prefix${answer.complete ? '' : ': the scan stopped, search by id'})`
      : ''
  const matching = state.search ? ` matching "${state.search}"` : ''
  $('count').textContent = `${shown} execution${shown === 1 ? '' : 's'}${matching}${more}`
}

// ---------------------------------------------------------------------------------------
// One execution: steps as a tree (nested task ids are split on ':')
// ---------------------------------------------------------------------------------------

function buildTree(steps) {
  const root = { children: new Map() }
  for (const step of steps) {
    let node = root
    const parts = step.id.split(':')
    parts.forEach((part, i) => {
      if (!node.children.has(part)) node.children.set(part, { name: part, path: parts.slice(0, i + 1).join(':'), children: new Map(), step: null })
      node = node.children.get(part)
    })
    node.step = step
  }
  return root
}

function renderNode(node) {
  const step = node.step
  const head = el('div', { className: 'step-head' }, el('span', { className: 'step-name', title: node.path }, node.name))
  if (step) {
    const busy = step.state !== 'done'
    head.append(el('span', { className: busy ? 'state-busy' : 'state-done' }, step.state))
    if (step.size !== null) head.append(el('span', { className: 'muted' }, formatSize(step.size)))
    head.append(el('span', { className: 'muted' }, `expires in ${formatTtl(step.expiresIn)}`))
    if (state.info.allowWrites) {
      head.append(el('button', { type: 'button', className: 'danger reset', 'data-task': step.id, onclick: () => resetStep(step.id) }, 'Reset from this step'))
    }
  } else {
    head.append(el('span', { className: 'muted' }, '(nested steps only)'))
  }
  const item = el('li', { className: 'step', 'data-task': node.path }, head)
  if (step && step.value !== null) {
    item.append(el('pre', { className: 'value' }, step.value))
    if (step.truncated)
      item.append(el('p', { className: 'muted cut' }, `cut: the first ${state.info.maxValueChars} characters of ${formatSize(step.size)} are shown`))
  }
  if (node.children.size) item.append(el('ul', null, renderNodes(node.children)))
  return item
}

/**
 * The nodes of `children` (a Map), rendered into one fragment: appended one by one, never
 * spread into a call (`append(...nodes)`), which throws a RangeError in V8 past about
 * 120,000 arguments (an execution that fans out into that many steps).
 */
function renderNodes(children) {
  const fragment = document.createDocumentFragment()
  for (const child of children.values()) fragment.append(renderNode(child))
  return fragment
}

function renderDetail(detail) {
  const text = JSON.stringify(detail)
  if (text === state.shownDetail) return
  state.shownDetail = text
  $('placeholder').hidden = true
  $('detail').hidden = false
  $('detail-id').textContent = detail.id
  $('detail-state').textContent = detail.inProgress
    ? `in progress, expires in ${formatTtl(detail.expiresIn)}; ${detail.steps.length} steps`
    : `finished (no in-progress marker); ${detail.steps.length} steps`
  $('dispose').hidden = !state.info.allowWrites
  const tree = buildTree(detail.steps)
  $('tree').replaceChildren(renderNodes(tree.children))
  if (detail.steps.length === 0) $('tree').append(el('li', { className: 'muted' }, 'no steps'))
}

function clearDetail(message) {
  state.shownDetail = ''
  $('detail').hidden = true
  $('placeholder').hidden = false
  $('placeholder').textContent = message
}

// ---------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------

function select(id) {
  state.selected = id
  state.shownDetail = ''
  history.replaceState(null, '', `#${encodeURIComponent(id)}`)
  refresh()
}

// The id goes in the query or the body, not the path, where "." and ".." would be dropped.
const executionPath = (id) => `/api/execution?id=${encodeURIComponent(id)}`

async function resetStep(taskId) {
  const id = state.selected
  if (
    !confirm(
      `Reset step "${taskId}" of execution "${id}"?\n\nIts result and in-progress mark, and those of its nested steps, are removed: the next delivery runs them again.`,
    )
  )
    return
  try {
    const answer = await api('/api/execution/reset', { method: 'POST', body: JSON.stringify({ id, taskId }) })
    setStatus(`reset ${answer.reset.join(', ')}`)
  } catch (err) {
    setStatus(`reset failed: ${err.message}`)
  }
  await refresh()
}

async function disposeSelected() {
  const id = state.selected
  if (!confirm(`Dispose execution "${id}"?\n\nIts marker, steps in progress and results are removed.`)) return
  try {
    await api('/api/execution/dispose', { method: 'POST', body: JSON.stringify({ id }) })
    setStatus(`disposed ${id}`)
    state.selected = null
    history.replaceState(null, '', '#')
    clearDetail('Pick an execution to see its steps.')
  } catch (err) {
    setStatus(`dispose failed: ${err.message}`)
  }
  await refresh()
}

// ---------------------------------------------------------------------------------------
// Refreshing
// ---------------------------------------------------------------------------------------

async function refresh() {
  if (state.busy) return
  state.busy = true
  try {
    const query = state.search ? `?search=${encodeURIComponent(state.search)}` : ''
    renderList(await api(`/api/executions${query}`))
    if (state.selected !== null) {
      try {
        renderDetail(await api(executionPath(state.selected)))
      } catch (err) {
        if (err.status !== 404) throw err
        clearDetail(`No execution "${state.selected}" (disposed, or expired).`)
      }
    }
    if ($('status').dataset.error) {
      $('status').dataset.error = ''
      setStatus('')
    }
    document.body.dataset.refreshed = String(Date.now())
  } catch (err) {
    $('status').dataset.error = '1'
    setStatus(`cannot read the store: ${err.message}`)
  } finally {
    state.busy = false
  }
}

async function start() {
  state.info = await api('/api/info')
  $('store').textContent = `${state.info.store}${state.info.prefix ? ` (prefix "${state.info.prefix}")` : ''}`
  $('mode').textContent = state.info.allowWrites ? 'writes allowed' : 'read-only'
  $('dispose').addEventListener('click', disposeSelected)
  let typing
  $('search').addEventListener('input', (event) => {
    clearTimeout(typing)
    typing = setTimeout(() => {
      state.search = event.target.value.trim()
      state.shownList = ''
      refresh()
    }, 150)
  })
  if (location.hash.length > 1) state.selected = decodedHash(location.hash.slice(1))
  await refresh()
  setInterval(() => {
    if (!document.hidden) refresh()
  }, state.info.refreshMs)
}

/** The execution id a link's `#...` names: percent-decoded, or as written when it is not valid percent-encoding (`#100%`). */
function decodedHash(text) {
  try {
    return decodeURIComponent(text)
  } catch {
    return text
  }
}

start().catch((err) => setStatus(`cannot start: ${err.message}`))
