"""User interfaces: the Streamlit dashboard and the Gradio live-prediction app (thin layers over the library)."""
