// mmserve's playground: one page for chat with images, transcription, image
// generation and the server's status, using only mmserve's public HTTP API
// (the same calls any OpenAI client makes). No framework, no build step, no
// external resources: the binary embeds these files.

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = 'mmserve.playground.apiKey';

// ---- API access ---------------------------------------------------------------

function authHeaders() {
  const key = localStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The OpenAI-style error message of a failed response, or its status line.
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body?.error?.message) return `${response.status}: ${body.error.message}`;
  } catch {}
  return `${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ''}`;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) showBanner('The server asks for an API key: enter it at the top right and save.');
  return response;
}

function showBanner(text) {
  const banner = $('banner');
  banner.textContent = text;
  banner.hidden = !text;
}

function formatSeconds(seconds) {
  if (!Number.isFinite(seconds)) return '';
  const whole = Math.floor(seconds);
  const ms = Math.round((seconds - whole) * 1000);
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${h ? `${pad(h)}:` : ''}${pad(m)}:${pad(s)}.${pad(ms, 3)}`;
}

// A table row of text cells.
function tableRow(values) {
  const row = document.createElement('tr');
  for (const value of values) {
    const cell = document.createElement('td');
    cell.textContent = String(value);
    row.append(cell);
  }
  return row;
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---- tabs (WAI-ARIA tabs: arrow keys, Home/End) ---------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];
const tabListeners = new Map(); // panel id -> called when the panel is shown

function selectTab(tab, focus = false) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute('aria-selected', String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute('aria-controls')).hidden = !selected;
  }
  if (focus) tab.focus();
  const panel = tab.getAttribute('aria-controls');
  history.replaceState(null, '', `#${tab.id.slice('tab-'.length)}`);
  tabListeners.get(panel)?.();
}

for (const tab of tabs) {
  tab.addEventListener('click', () => selectTab(tab));
  tab.addEventListener('keydown', (event) => {
    const index = tabs.indexOf(tab);
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    selectTab(tabs[(next + tabs.length) % tabs.length], true);
  });
}

// ---- models -------------------------------------------------------------------

let models = [];

async function refreshModels() {
  try {
    const response = await api('/v1/models');
    if (response.status === 401) models = []; // api() has asked for the key
    else if (!response.ok) throw new Error(await errorMessage(response));
    else models = (await response.json()).data || [];
  } catch (error) {
    models = [];
    showBanner(`Could not list models: ${error.message}`);
  }
  fillModelPicker('chat-model', 'vision', 'chat-availability', 'chat-send', 'No vision model is served here.');
  fillModelPicker('asr-model', 'speech', 'asr-availability', 'asr-submit', 'No speech model is served here.');
  fillModelPicker('img-model', 'image', 'img-availability', 'img-generate', 'No image model is served here.');
  return models;
}

// Models a request can name: loaded ones, and those the server loads on first use.
const servable = (model) => model.status === 'loaded' || model.status === 'loading' ||
  (model.status === 'available' && model.loads_on_demand === true);

// Lists a service's models; the action stays disabled while none can serve.
function fillModelPicker(selectId, service, noticeId, actionId, noneText) {
  const select = $(selectId);
  const previous = select.value;
  const own = models.filter((model) => model.service === service);
  select.replaceChildren(...own.map((model) => {
    const label = model.status === 'loaded' ? model.id
      : servable(model) && model.status === 'available' ? `${model.id} (loads on first use)` : `${model.id} (${model.status})`;
    const option = new Option(label, model.id);
    option.disabled = !servable(model);
    return option;
  }));
  const loaded = own.filter(servable);
  if (loaded.some((model) => model.id === previous)) select.value = previous;
  else if (loaded.length) select.value = (loaded.find((model) => model.status === 'loaded') || loaded[0]).id;
  const notice = $(noticeId);
  let text = '';
  if (!own.length) text = noneText;
  else if (!loaded.length) {
    const model = own[0];
    const progress = model.status === 'loading' && model.progress !== undefined ? ` ${Math.round(model.progress * 100)}%` : '';
    text = `The ${service} model ${model.id} is ${model.status}${progress}${model.detail ? `: ${model.detail}` : ''}.`;
  }
  notice.textContent = text;
  notice.hidden = !text;
  if (!busy.has(actionId)) $(actionId).disabled = !loaded.length;
}

const busy = new Set(); // action buttons whose request is running

// ---- server-sent events over fetch --------------------------------------------

// Yields each `data:` payload of an SSE response body.
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += value;
    let end;
    while ((end = pending.search(/\r?\n\r?\n/)) >= 0) {
      const event = pending.slice(0, end);
      pending = pending.slice(end).replace(/^\r?\n\r?\n/, '');
      const data = event.split(/\r?\n/).filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, '')).join('\n');
      if (data) yield data;
    }
  }
}

// ---- chat -----------------------------------------------------------------------

const conversation = []; // OpenAI messages so far
let attachments = [];    // {name, dataUrl}
let chatAbort = null;

function addMessage(role, text, images = []) {
  const item = document.createElement('div');
  item.className = `message ${role}`;
  const label = document.createElement('div');
  label.className = 'role';
  label.textContent = role;
  const content = document.createElement('div');
  content.className = 'content';
  content.textContent = text;
  item.append(label);
  for (const image of images) {
    const img = document.createElement('img');
    img.src = image.dataUrl;
    img.alt = `attached image ${image.name}`;
    item.append(img);
  }
  item.append(content);
  $('chat-log').append(item);
  $('chat-log').scrollTop = $('chat-log').scrollHeight;
  return { item, content };
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function attachFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith('image/')) continue;
    attachments.push({ name: file.name || 'pasted image', dataUrl: await readAsDataUrl(file) });
  }
  renderAttachments();
}

function renderAttachments() {
  $('chat-attachments').replaceChildren(...attachments.map((image, index) => {
    const item = document.createElement('li');
    const img = document.createElement('img');
    img.src = image.dataUrl;
    img.alt = image.name;
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.textContent = '×';
    remove.setAttribute('aria-label', `Remove ${image.name}`);
    remove.addEventListener('click', () => {
      attachments.splice(index, 1);
      renderAttachments();
    });
    item.append(img, remove);
    return item;
  }));
}

async function sendChat() {
  const text = $('chat-input').value.trim();
  if (!text && !attachments.length) return;
  const images = attachments;
  const content = images.length
    ? [...(text ? [{ type: 'text', text }] : []), ...images.map((image) => ({ type: 'image_url', image_url: { url: image.dataUrl } }))]
    : text;
  conversation.push({ role: 'user', content });
  addMessage('user', text, images);
  $('chat-input').value = '';
  attachments = [];
  renderAttachments();

  const answer = addMessage('assistant', '');
  const body = {
    model: $('chat-model').value,
    messages: conversation,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($('chat-max-tokens').value) || 256,
    temperature: Number($('chat-temperature').value),
  };
  chatAbort = new AbortController();
  busy.add('chat-send');
  $('chat-send').disabled = true;
  $('chat-stop').disabled = false;
  $('chat-stats').textContent = 'Waiting for the first token…';
  const started = performance.now();
  let firstToken = 0, deltas = 0, usage = null, finish = null, reply = '';
  try {
    const response = await api('/v1/chat/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: chatAbort.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of sseData(response)) {
      if (data === '[DONE]') break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || 'the stream reported an error');
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta?.content;
        if (delta) {
          if (!firstToken) firstToken = performance.now();
          deltas++;
          reply += delta;
          answer.content.textContent = reply;
          $('chat-log').scrollTop = $('chat-log').scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    conversation.push({ role: 'assistant', content: reply });
    $('chat-stats').textContent = chatStats(started, firstToken, performance.now(), usage, deltas, finish);
  } catch (error) {
    if (error.name === 'AbortError') {
      if (reply) conversation.push({ role: 'assistant', content: reply });
      else conversation.pop(); // nothing came back: the question can be asked again
      answer.content.textContent = `${reply}${reply ? ' ' : ''}[stopped]`;
      $('chat-stats').textContent = chatStats(started, firstToken, performance.now(), null, deltas, 'stopped');
    } else {
      conversation.pop();
      answer.item.classList.add('error');
      answer.content.textContent = error.message;
      $('chat-stats').textContent = '';
    }
  } finally {
    chatAbort = null;
    busy.delete('chat-send');
    $('chat-stop').disabled = true;
    $('chat-send').disabled = !$('chat-model').value;
  }
}

// Time to first token, and the decode rate after it (tokens from usage when
// the server sent it, else the number of deltas).
function chatStats(started, firstToken, ended, usage, deltas, finish) {
  const parts = [];
  if (firstToken) parts.push(`TTFT ${Math.round(firstToken - started)} ms`);
  const tokens = usage?.completion_tokens ?? deltas;
  const decodeSeconds = (ended - firstToken) / 1000;
  if (firstToken && tokens > 1 && decodeSeconds > 0) parts.push(`${((tokens - 1) / decodeSeconds).toFixed(1)} tokens/s`);
  parts.push(`${tokens} tokens`);
  if (usage) parts.push(`prompt ${usage.prompt_tokens} tokens`);
  if (finish) parts.push(`finish: ${finish}`);
  return parts.join(' · ');
}

$('chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!$('chat-send').disabled) sendChat();
});
$('chat-input').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('chat-form').requestSubmit();
  }
});
$('chat-input').addEventListener('paste', (event) => {
  const files = [...(event.clipboardData?.files || [])].filter((file) => file.type.startsWith('image/'));
  if (files.length) {
    event.preventDefault();
    attachFiles(files);
  }
});
$('chat-files').addEventListener('change', async (event) => {
  await attachFiles([...event.target.files]);
  event.target.value = '';
});
$('chat-stop').addEventListener('click', () => chatAbort?.abort());
$('chat-new').addEventListener('click', () => {
  chatAbort?.abort();
  conversation.length = 0;
  $('chat-log').replaceChildren();
  $('chat-stats').textContent = '';
});

// ---- transcription -------------------------------------------------------------

let audioFile = null;   // the File (picked or recorded) to transcribe
let recorder = null;
let asrAbort = null;
let lastTranscript = null; // {format, raw, file}

function setAudio(file) {
  audioFile = file;
  const preview = $('asr-preview');
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = file ? URL.createObjectURL(file) : '';
  preview.hidden = !file;
}

$('asr-file').addEventListener('change', (event) => setAudio(event.target.files[0] || null));

$('asr-record').addEventListener('click', async () => {
  if (recorder) {
    recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const type = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4'].find((t) => MediaRecorder.isTypeSupported(t));
    recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
    const chunks = [];
    const started = performance.now();
    recorder.addEventListener('dataavailable', (event) => chunks.push(event.data));
    recorder.addEventListener('stop', () => {
      stream.getTracks().forEach((track) => track.stop());
      const mime = recorder.mimeType || 'audio/webm';
      const extension = mime.includes('ogg') ? 'ogg' : mime.includes('mp4') ? 'm4a' : 'webm';
      setAudio(new File(chunks, `recording.${extension}`, { type: mime }));
      $('asr-record-state').textContent = `Recorded ${((performance.now() - started) / 1000).toFixed(1)} s`;
      $('asr-record').textContent = 'Record from microphone';
      $('asr-record').setAttribute('aria-pressed', 'false');
      recorder = null;
    });
    recorder.start();
    $('asr-record').textContent = 'Stop recording';
    $('asr-record').setAttribute('aria-pressed', 'true');
    $('asr-record-state').textContent = 'Recording…';
  } catch (error) {
    $('asr-record-state').textContent = `Microphone unavailable: ${error.message}`;
  }
});

async function requestTranscript(format, withGranularity) {
  const form = new FormData();
  form.append('file', audioFile, audioFile.name);
  form.append('model', $('asr-model').value);
  form.append('response_format', format);
  const language = $('asr-language').value;
  const task = $('asr-task').value;
  if (language && task === 'transcriptions') form.append('language', language);
  if (withGranularity && format === 'verbose_json') {
    if ($('asr-ts-segment').checked) form.append('timestamp_granularities[]', 'segment');
    if ($('asr-ts-word').checked) form.append('timestamp_granularities[]', 'word');
  }
  asrAbort = new AbortController();
  const response = await api(`/v1/audio/${task}`, { method: 'POST', body: form, signal: asrAbort.signal });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.text();
}

// Cues of an SRT or WebVTT document: {start, end, text}.
function parseCues(raw) {
  const seconds = (stamp) => {
    const parts = stamp.replace(',', '.').split(':').map(Number);
    return parts.reduce((total, part) => total * 60 + part, 0);
  };
  const cues = [];
  for (const block of raw.replace(/\r/g, '').split(/\n\n+/)) {
    const lines = block.split('\n');
    const timing = lines.findIndex((line) => line.includes('-->'));
    if (timing < 0) continue;
    const [start, end] = lines[timing].split('-->').map((part) => seconds(part.trim().split(' ')[0]));
    cues.push({ start, end, text: lines.slice(timing + 1).join('\n') });
  }
  return cues;
}

function showTranscript(format, raw, elapsedMs) {
  let text = raw, segments = null, summary = [`${format}`, `${(elapsedMs / 1000).toFixed(2)} s`];
  if (format === 'json' || format === 'verbose_json') {
    const body = JSON.parse(raw);
    text = body.text ?? '';
    if (body.language) summary.push(`language ${body.language}`);
    if (body.duration !== undefined) summary.push(`audio ${Number(body.duration).toFixed(1)} s`);
    if (body.segments) segments = body.segments;
    if (body.words) summary.push(`${body.words.length} words`);
  } else if (format === 'srt' || format === 'vtt') {
    segments = parseCues(raw);
    text = segments.map((cue) => cue.text).join(' ');
  }
  $('asr-result').hidden = false;
  $('asr-summary').textContent = summary.join(' · ');
  $('asr-text').textContent = text.trim() || '(no speech recognised)';
  $('asr-raw').textContent = raw;
  const table = $('asr-segments');
  table.hidden = !segments;
  table.tBodies[0].replaceChildren(...(segments || []).map((segment) =>
    tableRow([formatSeconds(segment.start), formatSeconds(segment.end), segment.text.trim()])));
}

function setAsrBusy(on) {
  if (on) busy.add('asr-submit');
  else busy.delete('asr-submit');
  $('asr-submit').disabled = on || !$('asr-model').value;
  $('asr-cancel').disabled = !on;
  for (const id of ['asr-download-srt', 'asr-download-vtt']) $(id).disabled = on;
}

$('asr-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  if (!audioFile) {
    $('asr-record-state').textContent = 'Choose an audio file or record one first.';
    return;
  }
  const format = $('asr-format').value;
  setAsrBusy(true);
  $('asr-summary').textContent = 'Transcribing…';
  const started = performance.now();
  try {
    const raw = await requestTranscript(format, true);
    lastTranscript = { format, raw, file: audioFile, task: $('asr-task').value };
    showTranscript(format, raw, performance.now() - started);
  } catch (error) {
    $('asr-result').hidden = false;
    $('asr-summary').textContent = error.name === 'AbortError' ? 'Cancelled.' : `Failed: ${error.message}`;
  } finally {
    setAsrBusy(false);
  }
});
$('asr-cancel').addEventListener('click', () => asrAbort?.abort());

// Subtitles come from the server in the asked format: the last answer when it
// already is one, else the same audio again.
async function downloadSubtitles(format) {
  const base = (lastTranscript?.file?.name || 'transcript').replace(/\.[^.]+$/, '');
  if (lastTranscript?.format === format && lastTranscript.file === audioFile) {
    download(`${base}.${format}`, lastTranscript.raw, format === 'srt' ? 'application/x-subrip' : 'text/vtt');
    return;
  }
  if (!audioFile) return;
  setAsrBusy(true);
  try {
    const raw = await requestTranscript(format, false);
    download(`${base}.${format}`, raw, format === 'srt' ? 'application/x-subrip' : 'text/vtt');
  } catch (error) {
    $('asr-summary').textContent = `Failed: ${error.message}`;
  } finally {
    setAsrBusy(false);
  }
}
$('asr-download-srt').addEventListener('click', () => downloadSubtitles('srt'));
$('asr-download-vtt').addEventListener('click', () => downloadSubtitles('vtt'));
$('asr-format').addEventListener('change', () => {
  $('asr-granularity').disabled = $('asr-format').value !== 'verbose_json';
});

// ---- image generation ----------------------------------------------------------

let imageAbort = null;

async function pollProgress() {
  while (imageAbort) {
    try {
      const response = await api('/sdapi/v1/progress?skip_current_image=true');
      if (response.ok) {
        const progress = await response.json();
        const state = progress.state || {};
        $('img-progress').value = progress.progress || 0;
        const step = state.sampling_steps ? `step ${state.sampling_step} of ${state.sampling_steps}` : 'queued';
        const eta = progress.eta_relative > 0 ? ` · about ${Math.ceil(progress.eta_relative)} s left` : '';
        $('img-progress-text').textContent = `${step}${eta}`;
      }
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function addToGallery(src, parameters) {
  const item = document.createElement('li');
  const figure = document.createElement('figure');
  const img = document.createElement('img');
  img.src = src;
  img.alt = `Generated: ${parameters.prompt}`;
  const caption = document.createElement('figcaption');
  caption.textContent = `${parameters.prompt} · ${parameters.size} · ${parameters.steps} steps · seed ${parameters.seed} · ${parameters.sampler}`;
  const link = document.createElement('a');
  link.href = src;
  link.download = `mmserve-${parameters.seed}.png`;
  link.textContent = 'Download';
  caption.append(' · ', link);
  figure.append(img, caption);
  item.append(figure);
  $('img-gallery').prepend(item);
}

$('img-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const prompt = $('img-prompt').value.trim();
  if (!prompt) {
    $('img-progress-text').textContent = 'Write a prompt first.';
    return;
  }
  const seedValue = Number($('img-seed').value);
  const parameters = {
    model: $('img-model').value,
    prompt,
    negative_prompt: $('img-negative').value.trim() || undefined,
    size: `${$('img-width').value}x${$('img-height').value}`,
    steps: Number($('img-steps').value),
    guidance_scale: Number($('img-guidance').value),
    seed: seedValue >= 0 ? seedValue : Math.floor(Math.random() * 2 ** 31),
    sampler: $('img-sampler').value,
    n: 1,
    response_format: 'b64_json',
    output_format: 'png',
  };
  imageAbort = new AbortController();
  busy.add('img-generate');
  $('img-generate').disabled = true;
  $('img-interrupt').disabled = false;
  $('img-progress').value = 0;
  const polling = pollProgress();
  try {
    const response = await api('/v1/images/generations', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(parameters),
      signal: imageAbort.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    for (const image of body.data || []) {
      addToGallery(image.b64_json ? `data:image/png;base64,${image.b64_json}` : image.url, parameters);
    }
    $('img-progress').value = 1;
    $('img-progress-text').textContent = 'Done.';
  } catch (error) {
    $('img-progress-text').textContent = error.name === 'AbortError' ? 'Interrupted.' : `Failed: ${error.message}`;
  } finally {
    imageAbort = null;
    await polling;
    busy.delete('img-generate');
    $('img-interrupt').disabled = true;
    $('img-generate').disabled = !$('img-model').value;
  }
});
$('img-interrupt').addEventListener('click', async () => {
  await api('/sdapi/v1/interrupt', { method: 'POST' }).catch(() => {});
  imageAbort?.abort();
});

// ---- status --------------------------------------------------------------------

// Prometheus text format: [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const label of (match[3] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[label[1]] = label[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

// Histogram series by name and labels (without `le`): {key, name, labels, buckets: [[le, cumulative]], count}.
function histograms(samples, names) {
  const series = new Map();
  for (const sample of samples) {
    const base = names.find((name) => sample.name === `${name}_bucket` || sample.name === `${name}_count`);
    if (!base) continue;
    const { le, ...labels } = sample.labels;
    const key = `${base}${JSON.stringify(labels)}`;
    if (!series.has(key)) series.set(key, { key, name: base, labels, buckets: [], count: 0 });
    const entry = series.get(key);
    if (sample.name.endsWith('_bucket')) entry.buckets.push([le === '+Inf' ? Infinity : Number(le), sample.value]);
    else entry.count = sample.value;
  }
  return [...series.values()];
}

let baseline = null; // histogram counts when the page opened
// The page's own requests: not what anyone wants to see the latency of.
const PAGE_ROUTES = ['/', '/playground/{file}', '/metrics', '/readyz', '/v1/models', '/healthz'];

function subtractBaseline(entry) {
  const before = baseline?.get(entry.key);
  if (!before || $('status-window').value === 'server') return entry;
  return {
    ...entry,
    count: entry.count - before.count,
    buckets: entry.buckets.map(([le, value], index) => [le, value - (before.buckets[index]?.[1] ?? 0)]),
  };
}

function histogramChart(entry) {
  const figure = document.createElement('figure');
  figure.className = 'histogram';
  const title = document.createElement('h3');
  const labelText = Object.entries(entry.labels).filter(([name]) => name !== 'method')
    .map(([name, value]) => `${name}=${value}`).join(', ');
  title.textContent = `${entry.name} {${labelText}}`;
  figure.append(title);
  const perBucket = entry.buckets.map(([le, cumulative], index) => [le, cumulative - (index ? entry.buckets[index - 1][1] : 0)]);
  const peak = Math.max(1, ...perBucket.map(([, count]) => count));
  const width = 300, height = 110, bar = width / perBucket.length, labelEvery = Math.ceil(perBucket.length / 6);
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${entry.count} observations of ${title.textContent}`);
  perBucket.forEach(([le, count], index) => {
    const barHeight = (count / peak) * (height - 20);
    const rect = document.createElementNS(svg.namespaceURI, 'rect');
    rect.setAttribute('x', String(index * bar + 1));
    rect.setAttribute('y', String(height - 12 - barHeight));
    rect.setAttribute('width', String(Math.max(1, bar - 2)));
    rect.setAttribute('height', String(barHeight));
    const tip = document.createElementNS(svg.namespaceURI, 'title');
    tip.textContent = `≤ ${le} s: ${count}`;
    rect.append(tip);
    svg.append(rect);
    if (index % labelEvery && index !== perBucket.length - 1) return; // room for about six labels
    const label = document.createElementNS(svg.namespaceURI, 'text');
    label.setAttribute('x', String(index * bar + bar / 2));
    label.setAttribute('y', String(height - 2));
    label.setAttribute('text-anchor', 'middle');
    label.textContent = le === Infinity ? '∞' : String(le);
    svg.append(label);
  });
  figure.append(svg);
  const caption = document.createElement('figcaption');
  caption.className = 'stats';
  caption.textContent = `${entry.count} observations${quantileText(entry)}`;
  figure.append(caption);
  return figure;
}

// p50/p95 as the upper bound of the bucket that holds them.
function quantileText(entry) {
  if (!entry.count) return '';
  const bound = (q) => entry.buckets.find(([, cumulative]) => cumulative >= q * entry.count)?.[0];
  const show = (v) => (v === Infinity ? '> last bucket' : `≤ ${v} s`);
  return ` · p50 ${show(bound(0.5))} · p95 ${show(bound(0.95))}`;
}

const LATENCY_HISTOGRAMS = ['http_request_duration_seconds', 'model_inference_seconds', 'time_to_first_token_seconds', 'mmserve_real_time_factor'];

async function refreshStatus() {
  try {
    // Readiness as /readyz reports it, from the model list (/readyz answers
    // 503 while not ready, which a browser logs as a failed load).
    const [metricsResponse] = await Promise.all([api('/metrics'), refreshModels()]);
    // A model the registry loads on first use is ready to serve too.
    const reasons = models.filter((model) => model.status !== 'loaded' && !(model.status === 'available' && model.loads_on_demand))
      .map((model) => `${model.service} model '${model.id}' is ${model.status}${model.detail ? `: ${model.detail}` : ''}`);
    $('status-ready').textContent = reasons.length ? `Not ready: ${reasons.join('; ')}` : 'Ready: every model is loaded.';
    $('status-models').tBodies[0].replaceChildren(...models.map((model) => {
      const progress = model.status === 'loading' && model.progress !== undefined ? ` (${Math.round(model.progress * 100)}%)` : '';
      const memory = model.memory_bytes ? `${(model.memory_bytes / 2 ** 20).toFixed(1)} MiB` : '';
      const row = tableRow([model.id, model.service || '', `${model.status}${progress}`, memory, model.detail || '']);
      row.append(modelActions(model));
      return row;
    }));
    if (!metricsResponse.ok) throw new Error(await errorMessage(metricsResponse));
    const samples = parseMetrics(await metricsResponse.text());
    const services = new Map();
    for (const sample of samples) {
      if (sample.name !== 'mmserve_queue_depth' && sample.name !== 'mmserve_slots_busy') continue;
      const entry = services.get(sample.labels.service) || { waiting: 0, busy: 0 };
      if (sample.name === 'mmserve_queue_depth') entry.waiting = sample.value;
      else entry.busy = sample.value;
      services.set(sample.labels.service, entry);
    }
    $('status-queues').tBodies[0].replaceChildren(...[...services].map(([service, entry]) =>
      tableRow([service, entry.waiting, entry.busy])));
    const series = histograms(samples, LATENCY_HISTOGRAMS);
    if (!baseline) baseline = new Map(series.map((entry) => [entry.key, entry]));
    const shown = series.map(subtractBaseline).filter((entry) => entry.count > 0)
      .filter((entry) => !PAGE_ROUTES.includes(entry.labels.route));
    const charts = $('status-histograms');
    if (shown.length) charts.replaceChildren(...shown.map(histogramChart));
    else charts.textContent = 'No requests in this window yet.';
  } catch (error) {
    $('status-ready').textContent = `Status unavailable: ${error.message}`;
  }
}

// Load / Unload buttons for the models the registry manages.
function modelActions(model) {
  const cell = document.createElement('td');
  const action = model.status === 'loaded' ? 'unload' : model.loads_on_demand ? 'load' : null;
  if (!action || !['vision', 'speech'].includes(model.service)) return cell;
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = action === 'load' ? 'Load' : 'Unload';
  button.setAttribute('aria-label', `${button.textContent} ${model.id}`);
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      const response = await api(`/v1/models/${encodeURIComponent(model.id)}/${action}`, { method: 'POST' });
      $('status-action').textContent = response.ok
        ? `${model.id}: ${action === 'load' ? 'loading' : 'unloaded'}.`
        : `${model.id}: ${await errorMessage(response)}`;
    } catch (error) {
      $('status-action').textContent = `${model.id}: ${error.message}`;
    }
    await refreshStatus();
    if (action === 'load') watchModels();
  });
  cell.append(button);
  return cell;
}

let statusTimer = null;
tabListeners.set('panel-status', () => {
  refreshStatus();
  clearInterval(statusTimer);
  statusTimer = setInterval(() => {
    if ($('panel-status').hidden) clearInterval(statusTimer);
    else refreshStatus();
  }, 3000);
});
$('status-refresh').addEventListener('click', refreshStatus);
$('status-window').addEventListener('change', refreshStatus);

// ---- start ---------------------------------------------------------------------

$('api-key').value = localStorage.getItem(KEY_STORAGE) || '';
$('key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const key = $('api-key').value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  showBanner('');
  refreshModels();
});

// Models still loading show up as such; look again until every one is settled.
async function watchModels() {
  const list = await refreshModels();
  if (list.some((model) => model.status === 'loading')) setTimeout(watchModels, 1000);
}

// The latency baseline is the server's state when the page opened.
fetch('/metrics', { headers: authHeaders() }).then((r) => (r.ok ? r.text() : '')).then((text) => {
  if (!baseline) baseline = new Map(histograms(parseMetrics(text), LATENCY_HISTOGRAMS).map((entry) => [entry.key, entry]));
}).catch(() => {});
watchModels();
// #chat, #transcribe, #images, #status open their tab (links, back/forward).
const tabOfHash = () => tabs.find((tab) => tab.id === `tab-${location.hash.slice(1)}`);
window.addEventListener('hashchange', () => {
  const tab = tabOfHash();
  if (tab && tab.getAttribute('aria-selected') !== 'true') selectTab(tab);
});
selectTab(tabOfHash() || tabs[0]);
