// Shows that scripts arrive too, and says how this page was fetched.
window.addEventListener('load', () => {
  const [nav] = performance.getEntriesByType('navigation');
  document.getElementById('status').textContent =
      'The script ran; protocol ' + (nav ? nav.nextHopProtocol : 'unknown') + '.';
});
