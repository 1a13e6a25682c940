"""retino: train, watch, read and compare diabetic-retinopathy graders. ``streamlit run streamlit_app.py``"""

from pathlib import Path

import streamlit as st

# The icon is served by this app: a Material icon or an emoji would be fetched from the internet.
st.set_page_config(page_title="retino", page_icon=str(Path(__file__).parent / "retino_core/assets/favicon.png"),
                   layout="wide")

page = st.navigation([
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/live.py", title="Live", icon=":material/monitoring:"),
    st.Page("pages/results.py", title="Results", icon=":material/grid_on:"),
    st.Page("pages/classify.py", title="Classify", icon=":material/image_search:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/health_and_safety:"),
])
# Until some session has called st.navigation, Streamlit runs a deep link such as /live
# straight from pages/ (its legacy mode). Such a page comes here first, then goes back.
st.session_state.app = True
if "return_to" in st.session_state:
    st.switch_page(st.session_state.pop("return_to"), query_params=st.session_state.pop("return_params", None))
page.run()
