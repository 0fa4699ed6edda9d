// Just enough of React's hook API to run the spec's useChatWebSocket outside a renderer:
// one component instance, effects run right after the (single) render, state setters
// update the value the test reads through `state()`.
'use strict';

const slots = [];
let cursor = 0;
const effects = [];

function useRef(initial) {
  const i = cursor++;
  if (!(i in slots)) slots[i] = { current: initial };
  return slots[i];
}

function useState(initial) {
  const i = cursor++;
  if (!(i in slots)) slots[i] = { value: initial };
  const slot = slots[i];
  const set = (v) => {
    slot.value = typeof v === 'function' ? v(slot.value) : v;
  };
  return [slot.value, set, slot];
}

function useEffect(fn) {
  effects.push(fn);
}

// Renders `hook(...args)` once, runs its effects, and returns the hook's result plus a way
// to read the current state slots.
function render(hook, ...args) {
  cursor = 0;
  const result = hook(...args);
  effects.splice(0).forEach((fn) => fn());
  return { result, slots };
}

module.exports = { useRef, useState, useEffect, render };
